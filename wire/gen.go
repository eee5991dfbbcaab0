package wire

//go:generate go tool stringer -type=Kind -trimprefix=Kind -output=kind_string.go
