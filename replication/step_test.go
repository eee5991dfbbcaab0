package replication

import (
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
)

// A stepped node scans a map the timers found due when StepScans runs,
// with no goroutine of its own: a value changed in place goes to the
// sender as this node's write.
func TestStepScans(t *testing.T) {
	flows := newFakeTarget(4, 8)
	m := testMap("flows", 10, 4, 8, flows)
	m.Options = mapopt.Options{Scan: time.Second}
	clock := &fixedTime{now: time.Date(2041, 3, 4, 5, 6, 7, 0, time.UTC)}
	n := newTestNode(t, Config{Table: mustTable(t, testPayload, m), Time: clock})
	n.ready.become("test", 0)
	n.FireTimers()
	n.StepScans() // the first scan learns the map
	flows.state["key1"] = "in-place"
	clock.now = clock.now.Add(time.Second)
	n.FireTimers()
	n.StepScans()
	var sent []string
	n.relay.drain(func(_ int, op ops.Op, v knowledge.Version, key, value []byte) {
		if op == ops.Update && v.Origin == ourNode {
			sent = append(sent, string(key)+"="+string(value))
		}
	})
	if len(sent) != 1 || sent[0] != "key1=in-place" {
		t.Fatalf("after a stepped scan, relayed %q; want key1's value changed in place, as this node's write", sent)
	}
}
