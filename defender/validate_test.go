package defender

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
)

// TestCheckURL: the rule config and New share. The host is parsed: a name
// that starts like a loopback address is not one.
func TestCheckURL(t *testing.T) {
	t.Parallel()
	cases := []struct {
		url, err string // err: "" for valid
	}{
		{"https://api.securitycenter.microsoft.com", ""},
		{"https://eu.api.security.microsoft.com/", ""},
		{"http://127.0.0.1:8080", ""},
		{"http://localhost:1", ""},
		{"http://LOCALHOST", ""},
		{"http://[::1]:9", ""},
		{"http://127.0.0.2", ""},
		{"http://localhost.evil.example", "http is allowed only to a loopback host"},
		{"http://127.0.0.1.nip.io", "http is allowed only to a loopback host"},
		{"http://127.0.0.1@evil.example", "without user info"},
		{"https://user:pw@api.example.com", "without user info"},
		{"http://127.1", "http is allowed only to a loopback host"},
		{"http://[::ffff:127.0.0.1].evil", "not a URL"},
		{"ftp://127.0.0.1", "want https"},
		{"//api.example.com", "want https"},
		{"api.example.com", "absolute URL"},
		{"", "absolute URL"},
	}
	for _, tc := range cases {
		err := CheckURL(tc.url)
		if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("CheckURL(%q) = %v; want %q", tc.url, err, tc.err)
		}
		// New applies the same rule to the three URLs.
		_, nerr0 := New(Config{GraphURL: tc.url, WriteBack: true, TokenURL: "https://login.example.com/t", ClientID: testClientID, ClientSecret: testSecret}, nil, nil)
		if tc.url != "" && (nerr0 == nil) != (tc.err == "") {
			t.Errorf("New(graph_url %q) = %v", tc.url, nerr0)
		}
		_, nerr := New(Config{APIURL: tc.url, TokenURL: "https://login.example.com/t", ClientID: testClientID, ClientSecret: testSecret}, nil, nil)
		if tc.url != "" && (nerr == nil) != (tc.err == "") {
			t.Errorf("New(api_url %q) = %v", tc.url, nerr)
		}
		_, nerr = New(Config{TokenURL: tc.url, ClientID: testClientID, ClientSecret: testSecret}, nil, nil)
		if tc.url != "" && (nerr == nil) != (tc.err == "") {
			t.Errorf("New(token_url %q) = %v", tc.url, nerr)
		}
	}
	for _, u := range []string{"https://api.example.com/?x=1", "https://api.example.com/#f", "https://api.example.com/?"} {
		if err := CheckAPIURL(u); err == nil || !strings.Contains(err.Error(), "no query or fragment") {
			t.Errorf("CheckAPIURL(%q) = %v", u, err)
		}
	}
}

// TestCheckCertificate: the whole parse New does.
func TestCheckCertificate(t *testing.T) {
	t.Parallel()
	good, err := makeTestCert()
	if err != nil {
		t.Fatal(err)
	}
	certOnly := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: good.cert.Raw})
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	otherPKCS1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(other)})
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		pem  []byte
		err  string
	}{
		{"good", good.pem, ""},
		{"not PEM", []byte("this is not a certificate\n"), "no PEM data"},
		{"empty", nil, "no PEM data"},
		{"no key", certOnly, "no RSA private key"},
		{"key only", otherPKCS1, "no CERTIFICATE block"},
		{"other key", append(append([]byte{}, certOnly...), otherPKCS1...), "private key does not match"},
		{"EC key", append(append([]byte{}, certOnly...), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})...), "EC; want RSA"},
		{"encrypted", append(append([]byte{}, certOnly...), pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}})...), "encrypted"},
		{"bad certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}), "certificate:"},
	}
	for _, tc := range cases {
		err := CheckCertificate(tc.pem)
		if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.err)
		}
		_, nerr := New(Config{TenantID: testTenant, ClientID: testClientID, CertificatePEM: tc.pem}, nil, nil)
		if len(tc.pem) > 0 && (nerr == nil) != (tc.err == "") {
			t.Errorf("%s: New: %v", tc.name, nerr)
		}
	}
}

// TestProblems: the checks New runs after applying DefaultConfig, which the
// service's config runs on the values as configured.
func TestProblems(t *testing.T) {
	t.Parallel()
	var got []string
	for _, p := range DefaultConfig().Problems() {
		got = append(got, p.Field)
		if !errors.Is(p, ErrRequired) && !errors.Is(p, ErrNoCredential) {
			t.Errorf("default config: %v is not a missing value", p)
		}
	}
	if strings.Join(got, ",") != "tenant_id,client_id,client_secret_file" {
		t.Fatalf("default config problems at %v", got)
	}
	good := DefaultConfig()
	good.TenantID, good.ClientID, good.ClientSecret = testTenant, testClientID, testSecret
	for _, name := range Clouds {
		c := good
		c.Cloud = name
		if ps := c.Problems(); len(ps) != 0 {
			t.Errorf("cloud %s: %v", name, ps[0])
		}
		if _, _, _, err := Endpoints(name); err != nil || len(DefaultPackageHosts(name)) == 0 {
			t.Errorf("cloud %s: endpoints %v, package hosts %v", name, err, DefaultPackageHosts(name))
		}
	}
	for _, tc := range []struct {
		name  string
		mod   func(*Config)
		field string
	}{
		{"upper-case cloud", func(c *Config) { c.Cloud = "GCC" }, "cloud"},
		{"empty cloud", func(c *Config) { c.Cloud = "" }, "cloud"},
		{"zero rate", func(c *Config) { c.RateLimit.PerHour = 0 }, "rate_limit.per_hour"},
		{"zero cap", func(c *Config) { c.MaxPackageBytes = 0 }, "max_package_bytes"},
		{"token url without tenant", func(c *Config) { c.TenantID = ""; c.TokenURL = "https://login.example.com/t" }, ""},
		{"loopback http", func(c *Config) { c.APIURL = "http://[::ffff:127.0.0.1]:8080" }, ""},
		{"graph url http", func(c *Config) { c.GraphURL = "http://graph.example.com" }, "graph_url"},
		{"graph url with query", func(c *Config) { c.GraphURL = "https://graph.microsoft.com/?x=1" }, "graph_url"},
		{"graph url checked without write-back", func(c *Config) { c.WriteBack = false; c.GraphURL = "ftp://graph" }, "graph_url"},
		{"graph url loopback", func(c *Config) { c.WriteBack = true; c.GraphURL = "http://127.0.0.1:8089" }, ""},
	} {
		c := good
		tc.mod(&c)
		var fields []string
		for _, p := range c.Problems() {
			fields = append(fields, p.Field)
		}
		if strings.Join(fields, ",") != tc.field {
			t.Errorf("%s: problems at %v, want %q", tc.name, fields, tc.field)
		}
		// New reads a zero value as the default; anything else it refuses
		// exactly when Problems does.
		_, err := New(c, nil, nil)
		zero := tc.name == "empty cloud" || tc.name == "zero rate" || tc.name == "zero cap"
		if (err == nil) != (tc.field == "" || zero) {
			t.Errorf("%s: New = %v", tc.name, err)
		}
	}
}
