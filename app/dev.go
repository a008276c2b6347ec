package app

import (
	"fmt"
	"io"
	"net"
	"net/netip"
)

// loopbackOnly reports whether a listen address binds only loopback.
func loopbackOnly(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.IsLoopback()
}

// devSampleAlert is the MDE alert that the printed curl line posts.
const devSampleAlert = `{"id":"da637472900382838869_1364969609","machineId":"1e5bc9d7e413ddd7902c2932e418702b84d0cc07","computerDnsName":"ws-0142.corp.example.com","severity":"High","status":"New","category":"Ransomware","title":"Ransomware behavior detected","detectionSource":"WindowsDefenderAtp","alertCreationTime":"2026-11-26T10:00:00Z"}`

// printDevHelp tells a newcomer how to send the dev server an alert.
func printDevHelp(w io.Writer, addrs map[string]string) {
	hook := addrs["webhooks"]
	admin := addrs["admin"]
	if admin == "" {
		admin = hook
	}
	fmt.Fprintf(w, `
responder is running in --dev mode.
Send it a sample Microsoft Defender alert:

  curl -sS -H 'Content-Type: application/json' -d '%s' http://%s/webhooks/defender

Metrics: http://%s/metrics

`, devSampleAlert, hook, admin)
}
