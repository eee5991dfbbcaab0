package replication

// String methods, so that logs and test failures print names, not numbers.
//go:generate go tool stringer -type=binding -trimprefix=bind -output=binding_string.go
//go:generate go tool stringer -type=position -trimprefix=pos -output=position_string.go
//go:generate go tool stringer -type=retry -trimprefix=retry -output=retry_string.go
//go:generate go tool stringer -type=syncPhase -trimprefix=sync -output=syncphase_string.go
//go:generate go tool stringer -type=reason -trimprefix=reason -output=reason_string.go
