package vmtest

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestModuleLoadOrder(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n" +
		"kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n" +
		"kernel/net/llc/llc.ko:\n" +
		"kernel/drivers/net/veth.ko:\n" +
		"kernel/net/sched/sch-x.ko.xz:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/net/unix/unix.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := moduleLoadOrder(dir, []string{"veth", "bridge", "llc", "unix", "sch_x"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/net/veth.ko", "kernel/net/llc/llc.ko", "kernel/net/802/stp.ko",
		"kernel/net/bridge/bridge.ko", "kernel/net/sched/sch-x.ko.xz"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("load order\n got %q\nwant %q", got, want)
	}
	if _, err := moduleLoadOrder(dir, []string{"nosuch"}); err == nil {
		t.Error("unknown module accepted")
	}
}
