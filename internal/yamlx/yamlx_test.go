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
		{"bad duration", "server:\n  timeout: 10x\n", `f.yaml:2:12: server.timeout: invalid duration "10x" (use Go syntax such as 90s, 5m or 24h)`},
		{"wrong type", "server:\n  max: [1]\n", `f.yaml:2:8: server.max: expected an integer, got a list`},
		{"list expected", "server:\n  tls:\n    list: a\n", `f.yaml:3:11: server.tls.list: expected a list, got a scalar`},
		{"syntax", "server: {listen: 'a'\n", `f.yaml:1:9: syntax error: could not find flow mapping end token '}'`},
		{"duplicate key", "server:\n  listen: a\n  listen: b\n", `f.yaml:3:3: syntax error: mapping key "listen" already defined at [2:3]`},
		{"several problems", "server:\n  timeout: x\n  bogus: 1\n", "f.yaml:2:12: server.timeout: invalid duration \"x\" (use Go syntax such as 90s, 5m or 24h)\nf.yaml:3:3: server.bogus: unknown key"},
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
