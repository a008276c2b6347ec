package loopback

import "testing"

func TestHost(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]bool{
		"localhost": true, "LocalHost": true, "127.0.0.1": true, "127.9.9.9": true, "::1": true,
		"::ffff:127.0.0.1": true, "::1%lo": true,
		"": false, "0.0.0.0": false, "::": false, "10.0.0.1": false, "responder": false,
		"localhost.example.com": false, "127.0.0.1.nip.io": false, "127.1": false, "[::1]": false,
	} {
		if got := Host(host); got != want {
			t.Errorf("Host(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestListen(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1:9090": true, "[::1]:9090": true, "localhost:0": true, "[::ffff:127.0.0.1]:1": true,
		":9090": false, "0.0.0.0:9090": false, "[::]:9090": false, "127.0.0.1": false, "": false,
		"localhost.example.com:9090": false,
	} {
		if got := Listen(addr); got != want {
			t.Errorf("Listen(%q) = %v, want %v", addr, got, want)
		}
	}
}
