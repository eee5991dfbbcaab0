package vmtest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultModules are loaded in every VM: what network-namespace tests need
// and Debian builds as modules (dependencies such as stp and llc come
// along). xfrm_user and nfnetlink are there because vishvananda/netlink's
// NewHandle and NewHandleAt open XFRM and netfilter sockets too and fail
// with "protocol not supported" without them.
var DefaultModules = []string{"veth", "bridge", "xfrm_user", "nfnetlink"}

// moduleName normalises a module file or name the way modprobe does:
// base name without .ko and compression suffix, '-' and '_' equal.
func moduleName(s string) string {
	s = filepath.Base(s)
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

// moduleLoadOrder returns the module files (relative to modulesDir) to
// insmod, dependencies first, for the named modules. Modules built into
// the kernel are skipped. It reads modules.dep, where depmod lists a
// module's dependencies so that loading them last-to-first works.
func moduleLoadOrder(modulesDir string, names []string) ([]string, error) {
	deps, err := readModulesDep(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin, err := readBuiltin(filepath.Join(modulesDir, "modules.builtin"))
	if err != nil {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	var visit func(file string)
	visit = func(file string) {
		if seen[file] {
			return
		}
		seen[file] = true
		d := deps[moduleName(file)].deps
		for i := len(d) - 1; i >= 0; i-- {
			visit(d[i])
		}
		order = append(order, file)
	}
	for _, n := range names {
		m, ok := deps[moduleName(n)]
		switch {
		case ok:
			visit(m.file)
		case builtin[moduleName(n)]:
		default:
			return nil, fmt.Errorf("module %s: no such module in %s", n, filepath.Join(modulesDir, "modules.dep"))
		}
	}
	return order, nil
}

type moduleDeps struct {
	file string
	deps []string
}

// readModulesDep parses lines "kernel/a/x.ko: kernel/b/y.ko kernel/c/z.ko".
func readModulesDep(path string) (map[string]moduleDeps, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	defer f.Close()
	out := map[string]moduleDeps{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		out[moduleName(file)] = moduleDeps{file: file, deps: strings.Fields(rest)}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return out, nil
}

func readBuiltin(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	out := map[string]bool{}
	for _, l := range strings.Fields(string(b)) {
		out[moduleName(l)] = true
	}
	return out, nil
}
