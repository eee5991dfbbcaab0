package main

import (
	"maps"
	"testing"
)

// logFields reads slog's text lines, quoted values included.
func TestLogFields(t *testing.T) {
	got := logFields(`time=2026-12-02T14:19:41.166Z level=INFO msg="ready: initial sync complete" how="received a \"full\" resync" peers=1 after=7.527s`)
	want := map[string]string{"time": "2026-12-02T14:19:41.166Z", "level": "INFO", "msg": "ready: initial sync complete",
		"how": `received a "full" resync`, "peers": "1", "after": "7.527s"}
	if !maps.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}
