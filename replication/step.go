package replication

import "time"

// Stepping. [Node.Run] drives a node with goroutines in real time. A
// simulator drives the same steps itself instead, every node in one
// goroutine at virtual time (see package sim): [Node.Start] once, then
// [Node.Deliver], [Node.FireTimers], [Node.StepScans], [Node.StepSender],
// [Node.StepTransfers] and [Node.ReadDigests] whenever Run's goroutines
// would, then [Node.BeginStop] and [Node.Stop]. A node is driven one way
// or the other, never both.

// Start readies a node to be stepped: it takes the state file of the
// previous run, starts the wait of the initial sync and sends the first
// announce.
func (n *Node) Start() {
	n.restore()
	n.mu.Lock()
	n.ready.started = n.time.Now()
	n.mu.Unlock()
	n.sender.begin()
}

// StepSender does the sender's work of the moment without waiting: it
// takes every change the source holds, sends, checks the source for
// lost changes and announces when that is due. It returns when it wants
// to be stepped again, or the source's failure.
func (n *Node) StepSender() (time.Time, error) { return n.sender.step() }

// StepTransfers drives the snapshot transfers this node serves: it takes
// the requesters' acknowledgements, sends again what timed out, and
// sends what the window and the pace allow. It returns when it wants to
// be stepped again; the zero time if no transfer runs.
func (n *Node) StepTransfers() time.Time {
	return n.server.step(n.time.Now())
}

// BeginStop begins a clean stop: with a state file, the maps are read
// for it. The node runs on until [Node.Stop]; the file is saved if the
// sender has been stepped in between, late enough to find the capture
// drained after the read (a step [CaptureSlack] after BeginStop).
func (n *Node) BeginStop() { n.save = n.beginSave(false) }

// Stop ends a stepped node: the sender sends what it holds and a last
// announce, the transfers stop, and the state file, if begun, is saved
// with every version recorded since BeginStop. A node stopped without BeginStop,
// or not stopped at all, crashed: it leaves no state file.
func (n *Node) Stop() {
	n.sender.sendLast()
	n.server.shutdown()
	sv := n.save
	n.save = nil
	if sv != nil && !sv.drained(&n.sender.drainedAt) {
		sv.abort()
		n.saveFailed(errNotDrained)
		return
	}
	n.finishSave(sv)
}

// StepScans runs the scans of the maps the timers found due (see
// [Node.FireTimers]), as Run's scanning goroutine does: what a scan finds
// changed in place goes to the sender, to be sent at its next step.
func (n *Node) StepScans() {
	for {
		select {
		case m := <-n.scan.due:
			n.scan.scan(m)
			n.scan.done <- m
		default:
			return
		}
	}
}

// CaptureSlack is how long after a write its change may still be on its
// way into the capture ring; see [Node.BeginStop].
const CaptureSlack = captureSlack

// ReadDigests reads the maps into digests, once the node is ready, as Run
// does every [Config.DigestInterval]: the timers start a round with each
// new read.
func (n *Node) ReadDigests() {
	if !n.ready.isReady() {
		return
	}
	set, err := n.digester.read()
	if err != nil {
		n.log.Warn("digest round: cannot read the maps; trying again next round", "error", err)
		return
	}
	n.log.Debug("maps read into digests", "took", set.took.Round(time.Millisecond))
}
