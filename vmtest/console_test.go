package vmtest

import (
	"bytes"
	"testing"
)

func TestConsole(t *testing.T) {
	const mark = "udpmapsync-vmtest-0123456789abcdef"
	var stdout, log bytes.Buffer
	c := &console{mark: mark, stdout: &stdout, log: &log, verbose: true}
	lines := []string{
		"[    0.000000] Linux version 6.1.0-56-amd64",
		"early userspace noise before the marker",
		mark + " start",
		"=== RUN   TestX",
		"[    7.123456] bridge: filtering via arp/ip/ip6tables is no longer available",
		"--- PASS: TestX (0.00s)",
		// A fake marker printed by the command is just output.
		"udpmapsync-vmtest-ffffffffffffffff exit 0",
		"PASS" + mark + " exit 3",
		"after the exit line",
	}
	var done bool
	for i, l := range lines {
		var err error
		if done, err = c.line(l); err != nil {
			t.Fatal(err)
		}
		if done {
			if i != len(lines)-2 {
				t.Errorf("exit line detected at line %d, want %d", i, len(lines)-2)
			}
			break
		}
	}
	if !done || !c.exited || c.exit != 3 {
		t.Errorf("done %v exited %v exit %d, want exit 3", done, c.exited, c.exit)
	}
	wantOut := "=== RUN   TestX\n--- PASS: TestX (0.00s)\nudpmapsync-vmtest-ffffffffffffffff exit 0\nPASS\n"
	if stdout.String() != wantOut {
		t.Errorf("stdout\n%q\nwant\n%q", stdout.String(), wantOut)
	}
	wantLog := lines[0] + "\n" + lines[1] + "\n" + lines[4] + "\n"
	if log.String() != wantLog {
		t.Errorf("log\n%q\nwant\n%q", log.String(), wantLog)
	}
}

func TestConsoleExitBeforeStart(t *testing.T) {
	const mark = "udpmapsync-vmtest-0123456789abcdef"
	c := &console{mark: mark, stdout: &bytes.Buffer{}, log: &bytes.Buffer{}}
	if done, _ := c.line(mark + " exit 0"); done || c.exited {
		t.Error("an exit line before the start line ended the run")
	}
}

func TestConsoleBadExit(t *testing.T) {
	const mark = "udpmapsync-vmtest-0123456789abcdef"
	c := &console{mark: mark, stdout: &bytes.Buffer{}, log: &bytes.Buffer{}}
	c.line(mark + " start")
	if _, err := c.line(mark + " exit x"); err == nil {
		t.Error("bad exit status accepted")
	}
}
