package config

import "github.com/responder-dev/responder/internal/loopback"

// LoopbackOnly reports whether a listen address ("host:port") binds only
// loopback: its host is an IP loopback address (127.0.0.0/8, ::1) or
// "localhost". An empty host (":9090") binds every interface. It is the
// test the admin listener rule (handlers) and the Defender URL rule
// (defender) use.
func LoopbackOnly(listen string) bool { return loopback.Listen(listen) }
