package config

import (
	"net"
	"net/netip"
	"strings"
)

// LoopbackOnly reports whether a listen address ("host:port") binds only
// loopback: its host is an IP loopback address (127.0.0.0/8, ::1) or
// "localhost". An empty host (":9090") binds every interface.
func LoopbackOnly(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	return LoopbackHost(host)
}

// LoopbackHost reports whether host is "localhost" (any case) or an IP
// loopback address.
func LoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.IsLoopback()
}
