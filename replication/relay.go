package replication

import (
	"sync"
	"sync/atomic"

	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/ops"
)

// relayQueue carries entries from the receive side to the sender, which
// sends them in this node's change stream with the versions they have:
// after a merge, what this node holds that the serving peer lacked or
// held older goes back to the group. Keys and values are copied in.
type relayQueue struct {
	mu      sync.Mutex
	items   []relayItem
	data    []byte // keys and values, back to back
	waiting atomic.Int64
}

type relayItem struct {
	m             int // Table.maps index
	op            ops.Op
	v             knowledge.Version
	key, val, end int // offsets in data of the key, the value and the end
}

// add queues one entry of map index m, whose key and value sizes are
// len(key) and len(value).
func (q *relayQueue) add(m int, op ops.Op, v knowledge.Version, key, value []byte) {
	q.mu.Lock()
	it := relayItem{m: m, op: op, v: v, key: len(q.data), val: len(q.data) + len(key)}
	q.data = append(q.data, key...)
	q.data = append(q.data, value...)
	it.end = len(q.data)
	q.items = append(q.items, it)
	q.mu.Unlock()
	q.waiting.Add(1)
}

// drain hands every queued entry to fn, in order, and empties the queue.
// The key and value passed to fn are valid during the call only.
func (q *relayQueue) drain(fn func(m int, op ops.Op, v knowledge.Version, key, value []byte)) int {
	q.mu.Lock()
	items, data := q.items, q.data
	q.items, q.data = nil, nil
	q.mu.Unlock()
	q.waiting.Add(-int64(len(items)))
	for _, it := range items {
		var value []byte
		if it.op == ops.Update {
			value = data[it.val:it.end]
		}
		fn(it.m, it.op, it.v, data[it.key:it.val], value)
	}
	return len(items)
}
