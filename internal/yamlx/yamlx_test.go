package yamlx

import (
	"testing"
	"time"
)

type tlsConf struct {
	Cert  string `yaml:"cert"`
	Inner struct {
		Deep string `yaml:"deep"`
	} `yaml:"inner"`
	List []string `yaml:"list"`
}

type conf struct {
	Server struct {
		Listen  string        `yaml:"listen"`
		Timeout time.Duration `yaml:"timeout"`
		Max     int64         `yaml:"max"`
		TLS     tlsConf       `yaml:"tls"`
	} `yaml:"server"`
	Enabled *bool             `yaml:"enabled"`
	Labels  map[string]string `yaml:"labels"`
	Payload any               `yaml:"payload"`
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, src, want string
	}{
		{"unknown key three levels deep", "server:\n  tls:\n    inner:\n      depp: x\n", `f.yaml:4:7: server.tls.inner.depp: unknown key (did you mean "deep"?)`},
		{"bad duration", "server:\n  timeout: 10x\n", `f.yaml:2:12: server.timeout: invalid duration "10x" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)`},
		{"bad day duration", "server:\n  timeout: 1 day\n", `f.yaml:2:12: server.timeout: invalid duration "1 day" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)`},
		{"day without number", "server:\n  timeout: d\n", `f.yaml:2:12: server.timeout: invalid duration "d" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)`},
		{"wrong type", "server:\n  max: [1]\n", `f.yaml:2:8: server.max: expected an integer, got a list`},
		{"list expected", "server:\n  tls:\n    list: a\n", `f.yaml:3:11: server.tls.list: expected a list, got a scalar`},
		{"syntax", "server: {listen: 'a'\n", `f.yaml:1:9: syntax error: could not find flow mapping end token '}'`},
		{"duplicate key", "server:\n  listen: a\n  listen: b\n", `f.yaml:3:3: syntax error: mapping key "listen" already defined at [2:3]`},
		{"several problems", "server:\n  timeout: x\n  bogus: 1\n", "f.yaml:2:12: server.timeout: invalid duration \"x\" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)\nf.yaml:3:3: server.bogus: unknown key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var c conf
			_, err := Decode("f.yaml", []byte(tc.src), &c)
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if err.Error() != tc.want {
				t.Fatalf("error\n got: %s\nwant: %s", err, tc.want)
			}
		})
	}
}

func TestDecodeValues(t *testing.T) {
	t.Parallel()
	src := "server:\n  listen: ':8080'\n  timeout: 90s\n  max: 12\n  tls:\n    list: [a, b]\nenabled: false\nlabels: {a: '1'}\npayload: {x: [1, true, 'y'], z: null}\n"
	var c conf
	pos, err := Decode("f.yaml", []byte(src), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.Listen != ":8080" || c.Server.Timeout != 90*time.Second || c.Server.Max != 12 {
		t.Fatalf("server = %+v", c.Server)
	}
	if len(c.Server.TLS.List) != 2 || c.Enabled == nil || *c.Enabled || c.Labels["a"] != "1" {
		t.Fatalf("decoded %+v", c)
	}
	m, ok := c.Payload.(map[string]any)
	if !ok || len(m["x"].([]any)) != 3 || m["z"] != nil {
		t.Fatalf("payload = %#v", c.Payload)
	}
	if p := pos["server.timeout"]; p.Line != 3 || p.Col != 12 {
		t.Fatalf("position of server.timeout = %+v", p)
	}
	if p := pos.Lookup("f.yaml", "server.tls.cert"); p.Line != 5 {
		t.Fatalf("lookup of absent key = %+v, want its parent key's position", p)
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	const day = 24 * time.Hour
	good := []struct {
		in   string
		want time.Duration
	}{
		{"0", 0},
		{"90s", 90 * time.Second},
		{"1h30m", 90 * time.Minute},
		{"-5m", -5 * time.Minute},
		{"+5m", 5 * time.Minute},
		{"90d", 90 * day},
		{"1d12h", 36 * time.Hour},
		{"1.5d", 36 * time.Hour},
		{".5d", 12 * time.Hour},
		{"2w", 14 * day},
		{"1w2d3h4m5s", 9*day + 3*time.Hour + 4*time.Minute + 5*time.Second},
		{"12h1d", 36 * time.Hour},
		{"0d", 0},
		{"-1d", -day},
		{"36500d", 36500 * day},
		{"250ms", 250 * time.Millisecond},
	}
	for _, tc := range good {
		got, err := ParseDuration(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseDuration(%q) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
		// Durations without the new units parse exactly as Go parses them.
		if want, err := time.ParseDuration(tc.in); err == nil && want != got {
			t.Errorf("ParseDuration(%q) = %s, Go says %s", tc.in, got, want)
		}
	}
	for _, in := range []string{"", "d", "90", "1 d", "1 day", "1d 12h", "1dd", "1y", "1D", "-", "1..5d", "1d-2h", "200000d", "20000w", "106751d23h48m", "5000000h1d"} {
		if got, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %s, want an error", in, got)
		}
	}
}

func TestEmptyDocumentKeepsDefaults(t *testing.T) {
	t.Parallel()
	var c conf
	c.Server.Listen = "default"
	if _, err := Decode("f.yaml", []byte("# only a comment\n"), &c); err != nil {
		t.Fatal(err)
	}
	if c.Server.Listen != "default" {
		t.Fatalf("listen = %q", c.Server.Listen)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("server:\n  listen: a\n  tls: {list: [a]}\npayload: {a: [1]}\n"))
	f.Add([]byte("a: &x 1\nb: *x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c conf
		_, _ = Decode("f.yaml", data, &c)
	})
}
