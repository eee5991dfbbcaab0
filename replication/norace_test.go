//go:build !race

package replication

// raceEnabled skips allocation checks: the race detector allocates.
const raceEnabled = false
