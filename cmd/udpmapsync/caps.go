package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/udpmapsync/udpmapsync/privileges"
)

// checkCapabilities fails early, naming each missing capability, why the
// daemon needs it and how to grant it, where opening maps or loading the
// capture would fail with a bare EPERM.
func checkCapabilities() error {
	missing, err := privileges.Missing()
	if err != nil {
		return err
	}
	return capabilityError(missing)
}

// capabilityError says what the missing capabilities are for and how to
// grant them all; nil if none is missing.
func capabilityError(missing []privileges.Capability) error {
	if len(missing) == 0 {
		return nil
	}
	noun, them := "capabilities", "them"
	if len(missing) == 1 {
		noun, them = "capability", "it"
	}
	names := make([]string, len(missing))
	for i, c := range missing {
		names[i] = c.Name
	}
	var b strings.Builder
	fmt.Fprintf(&b, "missing %s %s:", noun, strings.Join(names, ", "))
	for _, c := range missing {
		fmt.Fprintf(&b, "\n  %s: %s", c.Name, c.Why)
	}
	var all, k8s []string
	for _, name := range privileges.Names() {
		all = append(all, name)
		k8s = append(k8s, strings.TrimPrefix(name, "CAP_"))
	}
	fmt.Fprintf(&b, "\ngrant %s: run udpmapsync as root;"+
		" or in its systemd unit AmbientCapabilities=%[2]s and CapabilityBoundingSet=%[2]s (deploy/systemd/udpmapsync.service);"+
		" or in Kubernetes securityContext.capabilities.add: [%[3]s] (deploy/kubernetes/daemonset.yaml)",
		them, strings.Join(all, " "), strings.Join(k8s, ", "))
	return errors.New(b.String())
}
