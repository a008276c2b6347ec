// Command responder receives alert webhooks, decides with YAML rules whether
// the machine in an alert qualifies for forensic collection, and asks
// Microsoft Defender for Endpoint to collect an investigation package.
package main

import (
	"os"

	"github.com/responder-dev/responder/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
