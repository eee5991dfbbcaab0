package vmtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// printkLine matches a kernel message on the console ("[    1.234567] ...").
var printkLine = regexp.MustCompile(`^\[\s*\d+\.\d+\] `)

// bootLogLines is how much of the boot log is kept to explain a VM that
// never started or never finished the command.
const bootLogLines = 40

func boot(ctx context.Context, opts *Options, k *Kernel, initrd, mark string) (*Result, error) {
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	args := append([]string{"-accel", opts.Accel}, opts.Arch.machine...)
	args = append(args,
		"-smp", strconv.Itoa(opts.CPUs), "-m", strconv.Itoa(opts.MemoryMB),
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", k.Image, "-initrd", initrd,
		"-append", cmdline(opts.Arch, opts.Verbose),
	)
	qemu := exec.CommandContext(ctx, lookTool(opts.Arch.qemu), args...)
	qemu.WaitDelay = 5 * time.Second
	// qemu must not outlive us when go test kills us on its timeout.
	qemu.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	qemu.Stderr = &stderr
	out, err := qemu.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}

	// Pdeathsig fires when the thread that started qemu exits, so that
	// thread stays locked until qemu is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := time.Now()
	if err := qemu.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	res := &Result{}
	con := &console{mark: mark, stdout: opts.Stdout, log: opts.Log, verbose: opts.Verbose}
	var perr error
	// ReadString, not a Scanner: a line of any length must not stop the
	// reading, or qemu would block on a full pipe until the timeout.
	rd := bufio.NewReader(out)
	for {
		line, rerr := rd.ReadString('\n')
		if rerr != nil && line == "" {
			break
		}
		var done bool
		done, perr = con.line(strings.TrimRight(line, "\r\n"))
		if con.started && res.Boot == 0 {
			res.Boot = time.Since(start)
		}
		if done || perr != nil {
			res.Total = time.Since(start)
			// poweroff -f follows at once; do not wait for it.
			cancel()
			break
		}
	}
	werr := qemu.Wait()
	switch {
	case perr != nil:
		return nil, perr
	case con.exited:
		res.ExitCode = con.exit
		return res, nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded) && con.started:
		return nil, fmt.Errorf("%w after %v while the command ran; raise --timeout", ErrTimeout, opts.Timeout)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return nil, fmt.Errorf("%w after %v before /init ran; kernel log:\n%s", ErrTimeout, opts.Timeout, strings.Join(con.tail, "\n"))
	case ctx.Err() != nil:
		return nil, fmt.Errorf("vm: %w", ctx.Err())
	}
	return nil, fmt.Errorf("vm stopped without reporting an exit status (qemu: %v %s); kernel log:\n%s",
		werr, strings.TrimSpace(stderr.String()), strings.Join(con.tail, "\n"))
}

// console follows the guest's serial console: the boot log until /init's
// start line, then the command's output until the exit line.
type console struct {
	mark        string
	stdout, log io.Writer
	verbose     bool

	started bool
	exited  bool
	exit    int
	tail    []string // last kernel lines, to explain a failed boot
}

// line handles one console line without its line ending and reports
// whether it was the exit line.
func (c *console) line(l string) (bool, error) {
	if i := strings.Index(l, c.mark+" exit "); i >= 0 && c.started {
		// Output without a final newline shares the line with the marker.
		if i > 0 {
			fmt.Fprintln(c.stdout, l[:i])
		}
		code, err := strconv.Atoi(strings.TrimSpace(l[i+len(c.mark)+len(" exit "):]))
		if err != nil {
			return false, fmt.Errorf("vm: bad exit line %q", l)
		}
		c.exited, c.exit = true, code
		return true, nil
	}
	switch {
	case !c.started && strings.HasSuffix(l, c.mark+" start"):
		c.started = true
	case !c.started || printkLine.MatchString(l):
		if c.verbose {
			fmt.Fprintln(c.log, l)
		}
		if c.tail = append(c.tail, l); len(c.tail) > bootLogLines {
			c.tail = c.tail[1:]
		}
	default:
		fmt.Fprintln(c.stdout, l)
	}
	return false, nil
}

// cmdline is the kernel command line; quiet keeps the boot log short, and
// the log is wanted only when verbose.
func cmdline(arch *Arch, verbose bool) string {
	if verbose {
		return "console=" + arch.Console + " panic=-1"
	}
	return "console=" + arch.Console + " panic=-1 quiet"
}
