// Package loopback holds the one test of "this host is loopback" that the
// admin listener rule (handlers), the Defender URL rule (defender) and the
// --dev listener check (app) share, so that they cannot disagree on a name
// such as localhost.example.com or an IPv4-mapped address.
package loopback

import (
	"net"
	"net/netip"
	"strings"
)

// Host reports whether host (without port or brackets) is "localhost" (any
// case) or an IP loopback address: 127.0.0.0/8, ::1, or either written as
// an IPv4-mapped address or with a zone. A name that merely starts like one
// (localhost.example.com, 127.0.0.1.nip.io) is not: DNS decides where it
// points.
func Host(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.Unmap().IsLoopback()
}

// Listen reports whether a listen address ("host:port") binds only
// loopback: its host passes Host. An empty host (":9090") binds every
// interface, and an address without a port is not a listen address.
func Listen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	return Host(host)
}
