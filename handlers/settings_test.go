package handlers

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/metrics"
)

func TestParseCIDR(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, want string // want "" for an error
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"192.0.2.7", "192.0.2.7/32"},
		{"2001:db8::/32", "2001:db8::/32"},
		{"::1", "::1/128"},
		{"10.0.0.0/33", ""},
		{"10.0.0.0/8 ", ""},
		{"10.0.0", ""},
		{"example.com", ""},
		{"", ""},
	} {
		p, err := ParseCIDR(tc.in)
		if tc.want == "" {
			if err == nil || err.Error() != `invalid CIDR "`+tc.in+`"` {
				t.Errorf("ParseCIDR(%q) = %v, %v; want an error", tc.in, p, err)
			}
			continue
		}
		if err != nil || p != netip.MustParsePrefix(tc.want) {
			t.Errorf("ParseCIDR(%q) = %v, %v; want %s", tc.in, p, err, tc.want)
		}
	}
}

// TestNewRefusesWhatValidateRefuses: New runs Validate, the check config
// runs for `check` and `serve`, so a caller that builds its own settings
// cannot start a server config would refuse.
func TestNewRefusesWhatValidateRefuses(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		mutate func(*Settings)
		want   string
		class  error
	}{
		"bad cidr":         {func(s *Settings) { s.Webhooks.AllowCIDRs = []string{"10.0.0.0/8", "10.0.0.0/33"} }, `webhooks.allow_cidrs[1]: invalid CIDR "10.0.0.0/33"`, nil},
		"key without cert": {func(s *Settings) { s.Server.TLSKeyFile = t.TempDir() }, "server.tls_cert_file: tls_cert_file and tls_key_file must be set together", nil},
		"no body cap":      {func(s *Settings) { s.Server.MaxBodyBytes = 0 }, "server.max_body_bytes: must be positive, got 0", nil},
		"bad allowed host": {func(s *Settings) { s.Admin.AllowedHosts = []string{"*.example.com"} }, `admin.allowed_hosts[0]: "*.example.com" is not a host name`, nil},
		"no webhook auth":  {func(s *Settings) { s.Webhooks.AllowUnauthenticated = false }, "webhooks: no webhook authentication is configured", ErrNoWebhookAuth},
		"open admin api":   {func(s *Settings) { s.Server.AdminListen = "0.0.0.0:0"; s.Admin.AllowUnauthenticated = false }, `server.admin_listen: "0.0.0.0:0" is not loopback-only and no admin token is set`, ErrOpenAdminAPI},
	} {
		s := testConfig()
		tc.mutate(s)
		problems := s.Validate()
		if len(problems) != 1 || !strings.HasPrefix(problems[0].Error(), tc.want) || !errors.Is(problems[0], tc.class) && tc.class != nil {
			t.Errorf("%s: Validate = %v, want one problem %q", name, problems, tc.want)
		}
		_, err := New(Options{Settings: *s, Gatherer: prometheus.NewRegistry(), Logger: zap.NewNop(),
			Webhooks: &Webhooks{Auth: &WebhookAuth{}, Sink: &fakeSink{}, Metrics: metrics.New(nil), Logger: zap.NewNop()}})
		if err == nil || !strings.Contains(err.Error(), tc.want) || tc.class != nil && !errors.Is(err, tc.class) {
			t.Errorf("%s: New = %v, want %q", name, err, tc.want)
		}
	}
	if problems := testConfig().Validate(); len(problems) != 0 {
		t.Fatalf("test settings: %v", problems)
	}
}

func TestDefaultSettings(t *testing.T) {
	t.Parallel()
	s := DefaultSettings()
	if s.Server.Listen != ":8080" || s.Server.AdminListen != ":9090" || s.Server.MaxBodyBytes != 1<<20 ||
		s.Webhooks.HMACHeader != "X-Grafana-Alerting-Signature" || s.AdminAddr() != ":9090" || s.WebhookAuthConfigured() {
		t.Fatalf("defaults = %+v", s)
	}
}
