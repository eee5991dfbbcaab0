package privileges

import "testing"

// TestRequiredCapabilitiesTable checks each entry's number against its
// name (capabilities(7)).
func TestRequiredCapabilitiesTable(t *testing.T) {
	numbers := map[string]int{
		"CAP_BPF": 39, "CAP_PERFMON": 38, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
		"CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24, "CAP_IPC_LOCK": 14,
	}
	seen := map[string]bool{}
	for _, c := range Required {
		if n, ok := numbers[c.Name]; !ok || n != c.Number {
			t.Errorf("%s is number %d in the table; capabilities(7) says %d", c.Name, c.Number, n)
		}
		if seen[c.Name] {
			t.Errorf("%s twice", c.Name)
		}
		seen[c.Name] = true
		if c.Why == "" {
			t.Errorf("%s: no reason given", c.Name)
		}
	}
	if seen["CAP_SYS_ADMIN"] {
		t.Error("CAP_SYS_ADMIN is needed only for --map id:N and name:NAME; it must not be required")
	}
}
