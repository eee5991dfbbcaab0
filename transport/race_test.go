//go:build race

package transport

// raceEnabled skips allocation checks: the race detector allocates.
const raceEnabled = true
