package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/responder-dev/responder/examples"
)

// TestCheckAndServeRefuseAlike: what the listeners and the Defender client
// would refuse, `check` reports at its file:line:col and `serve` refuses
// with the same words before it opens anything: both run config.Load, which
// runs the owners' checks (handlers.ParseCIDR, defender.Config.Problems).
func TestCheckAndServeRefuseAlike(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), examples.Rules, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "responder.yaml")
	src := `server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
webhooks:
  allow_cidrs: ["10.0.0.0/8", "10.0.0.0/33"]
admin:
  allow_unauthenticated: true
store:
  dsn: ` + filepath.Join(dir, "responder.db") + `
defender:
  cloud: GCC
  dry_run: true
  client_secret_file: secret
`
	if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("s3cr3t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := []string{
		cfg + `:5:31: webhooks.allow_cidrs[1]: invalid CIDR "10.0.0.0/33"`,
		cfg + `:11:10: defender.cloud: unknown cloud "GCC" (want one of "commercial", "gcc", "gcc-high", "dod")`,
		// A credential builds the client even in dry-run mode, and the
		// client needs these: serve used to fail on them after check passed.
		cfg + `:10:1: defender.tenant_id: required when a Defender credential is set: the client is built even with defender.dry_run`,
		cfg + `:10:1: defender.client_id: required when a Defender credential is set: the client is built even with defender.dry_run`,
	}
	var out, errOut strings.Builder
	if code := Main([]string{"check", "--config", cfg}, nil, &out, &errOut); code != 1 {
		t.Fatalf("check exit %d\n%s%s", code, out.String(), errOut.String())
	}
	var got []string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, cfg+":") {
			got = append(got, line)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("check:\n got: %s\nwant: %s", out.String(), strings.Join(want, "\n"))
	}
	out.Reset()
	if code := Main([]string{"serve", "--config", cfg}, nil, &out, &errOut); code != 1 {
		t.Fatalf("serve exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if got, w := strings.TrimSpace(errOut.String()), "responder serve: invalid configuration: "+strings.Join(want, "; "); got != w {
		t.Fatalf("serve:\n got: %s\nwant: %s", got, w)
	}
	if strings.Contains(out.String()+errOut.String(), "s3cr3t") {
		t.Fatal("a secret was printed")
	}
}
