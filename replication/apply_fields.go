package replication

import (
	"time"

	"github.com/udpmapsync/udpmapsync/ops"
)

// localForm turns a peer's record of m, about to be written, into this
// node's form in place (see [fieldPlan.fromWire]) and records its print
// for the scans. Local fields cost a read of the entry before the write;
// the datapath may change them between the two, and then the write puts
// back what the read found. Called with the knowledge lock held.
func (a *applier) localForm(m *localMap, op ops.Op, key, val []byte, now time.Time) {
	if m.plan == nil {
		return
	}
	if op == ops.Update {
		var mine []byte
		if m.plan.keepLocal {
			if len(a.mine) < m.valueSize {
				a.mine = make([]byte, m.valueSize)
			}
			// A failed read keeps nothing: the local bytes are zero, as
			// for a new entry.
			if found, err := m.Target.Lookup(key, a.mine[:m.valueSize]); err == nil && found {
				mine = a.mine[:m.valueSize]
			}
		}
		m.plan.fromWire(val, mine)
	}
	a.prints.record(m.index, op, key, val, now)
}
