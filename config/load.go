package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/handlers"
	"github.com/responder-dev/responder/internal/logging"
	"github.com/responder-dev/responder/internal/yamlx"
	"github.com/responder-dev/responder/store"
)

// EnvPrefix starts every environment override: RESPONDER_ + the key path in
// upper case with "_" for "." (defender.api_url -> RESPONDER_DEFENDER_API_URL).
const EnvPrefix = "RESPONDER_"

// LookupEnv reads one environment variable; os.LookupEnv in production.
type LookupEnv func(key string) (string, bool)

// Problem is one configuration problem with its place: a file position
// ("responder.yaml:12:5"), an environment variable name, or "config".
type Problem struct {
	Where string
	Path  string
	Msg   string
}

// Error formats the problem as "where: path: message".
func (p *Problem) Error() string {
	if p.Path == "" {
		return p.Where + ": " + p.Msg
	}
	return p.Where + ": " + p.Path + ": " + p.Msg
}

// Problems is every problem of one configuration, in file order.
type Problems []*Problem

// Error joins the problems, one per line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes each problem to errors.As.
func (ps Problems) Unwrap() []error {
	out := make([]error, len(ps))
	for i, p := range ps {
		out[i] = p
	}
	return out
}

// loader carries what is needed to say where a value came from.
type loader struct {
	cfg      *Config
	file     string
	dir      string
	pos      yamlx.Positions
	fromEnv  map[string]string // key path -> env variable that set it
	env      LookupEnv
	problems Problems
	// decodeFailed marks keys whose value did not decode: validating the
	// zero value left behind would only repeat the problem.
	decodeFailed map[string]bool
}

// Load reads the configuration: base (Default() when nil), then the YAML
// file at path when path is not "", then RESPONDER_* environment overrides,
// then secrets from *_file keys or the environment; and validates the result.
// Every problem is returned at once, as Problems.
func Load(path string, base *Config, env LookupEnv) (*Config, error) {
	if base == nil {
		base = Default()
	}
	if env == nil {
		env = os.LookupEnv
	}
	l := &loader{cfg: base, file: path, fromEnv: map[string]string{}, env: env, pos: yamlx.Positions{}, decodeFailed: map[string]bool{}}
	if path != "" {
		l.dir = filepath.Dir(path)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading config: %w", err)
		}
		pos, err := yamlx.Decode(path, data, l.cfg)
		l.pos = pos
		var yerrs yamlx.Errors
		if errors.As(err, &yerrs) {
			for _, e := range yerrs {
				if e.Path == "" {
					// A syntax error: nothing was decoded, so validating
					// the defaults would only add noise.
					return nil, Problems{{Where: e.Pos.String(), Msg: e.Msg}}
				}
				l.problems = append(l.problems, &Problem{Where: e.Pos.String(), Path: e.Path, Msg: e.Msg})
				l.decodeFailed[e.Path] = true
			}
		} else if err != nil {
			return nil, err
		}
	}
	l.cfg.File = path
	l.applyEnv(reflect.ValueOf(l.cfg).Elem(), "")
	l.resolvePaths()
	l.readSecrets()
	l.validate()
	if len(l.problems) > 0 {
		return l.cfg, l.problems
	}
	return l.cfg, nil
}

// EnvName returns the environment variable that overrides a key path.
func EnvName(path string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// where names the origin of the value at path.
func (l *loader) where(path string) string {
	// A list item (key[i]) set from the environment is named by the
	// list's variable.
	key, _, _ := strings.Cut(path, "[")
	if name, ok := l.fromEnv[key]; ok {
		return "env " + name
	}
	if l.file == "" {
		return "config"
	}
	return l.pos.Lookup(l.file, path).String()
}

// problem records a problem at path, unless path already has one: a value
// that failed to decode would only fail validation again.
func (l *loader) problem(path, format string, args ...any) {
	if l.decodeFailed[path] {
		return
	}
	l.problems = append(l.problems, &Problem{Where: l.where(path), Path: path, Msg: fmt.Sprintf(format, args...)})
}

// applyEnv walks the config struct by its yaml tags and applies every
// RESPONDER_* variable that names a key.
func (l *loader) applyEnv(v reflect.Value, prefix string) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || f.Tag.Get("env") == "-" {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && fv.Type().String() != "time.Duration" {
			l.applyEnv(fv, path)
			continue
		}
		envName := EnvName(path)
		val, ok := l.env(envName)
		if !ok {
			continue
		}
		l.fromEnv[path] = envName
		if err := yamlx.SetScalar(fv, val); err != nil {
			l.problem(path, "%v", err)
			l.decodeFailed[path] = true
		}
	}
}

// resolvePaths makes file paths relative to the config file's directory, so a
// config and its rules can move together (as Alertmanager does).
func (l *loader) resolvePaths() {
	c := l.cfg
	if c.Defender.FederatedTokenFile == "" {
		if f, ok := l.env("AZURE_FEDERATED_TOKEN_FILE"); ok && f != "" {
			c.Defender.FederatedTokenFile = f
			l.fromEnv["defender.federated_token_file"] = "AZURE_FEDERATED_TOKEN_FILE"
		}
	}
	if c.Defender.FederatedTokenFile != "" {
		// Workload identity injects the tenant and client ids too.
		if v, ok := l.env("AZURE_TENANT_ID"); ok && c.Defender.TenantID == "" {
			c.Defender.TenantID = v
		}
		if v, ok := l.env("AZURE_CLIENT_ID"); ok && c.Defender.ClientID == "" {
			c.Defender.ClientID = v
		}
	}
	if l.dir == "" {
		return
	}
	for _, p := range []*string{
		&c.Server.TLSCertFile, &c.Server.TLSKeyFile, &c.Server.TLSClientCAFile,
		&c.Admin.BearerTokenFile, &c.Webhooks.BearerTokenFile, &c.Webhooks.BasicAuth.PasswordFile,
		&c.Webhooks.HMAC.SecretFile, &c.Defender.ClientSecretFile, &c.Defender.CertificateFile,
		&c.Defender.FederatedTokenFile,
	} {
		*p = l.resolve(*p)
	}
	for i := range c.Notify {
		c.Notify[i].URLFile = l.resolve(c.Notify[i].URLFile)
		c.Notify[i].HMACSecretFile = l.resolve(c.Notify[i].HMACSecretFile)
	}
	for i, f := range c.Rules.Files {
		c.Rules.Files[i] = l.resolve(f)
	}
}

func (l *loader) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(l.dir, p)
}

// readSecrets fills Secrets from each *_file key or its environment variable.
// A secret that is given but blank (an empty file, a variable of blanks) is
// a problem, never "no secret": an operator who sets it means to protect
// something. Such a key is marked failed, so that validation does not add
// "no token configured" to the problem that says why.
func (l *loader) readSecrets() {
	c := l.cfg
	read := func(filePath, fileKey, envName string, dst *string) {
		envVal, envSet := l.env(envName)
		switch {
		case filePath != "" && envSet:
			l.problem(fileKey, "set either %s or %s, not both", fileKey, envName)
			l.decodeFailed[fileKey] = true
		case filePath != "":
			data, err := os.ReadFile(filePath)
			if err != nil {
				l.problem(fileKey, "cannot read secret file: %v", errors.Unwrap(err))
				l.decodeFailed[fileKey] = true
				return
			}
			*dst = strings.TrimSpace(string(data))
			if *dst == "" {
				l.problem(fileKey, "secret file %q is empty", filePath)
				l.decodeFailed[fileKey] = true
			}
		case envSet:
			*dst = strings.TrimSpace(envVal)
			if *dst == "" {
				l.problems = append(l.problems, &Problem{Where: "env " + envName,
					Msg: "is set but empty or blank; give the secret a value (or " + fileKey + ") or unset the variable"})
				l.decodeFailed[fileKey] = true
			}
		}
	}
	read(c.Admin.BearerTokenFile, "admin.bearer_token_file", EnvPrefix+"ADMIN_BEARER_TOKEN", &c.Secrets.AdminBearerToken)
	read(c.Webhooks.BearerTokenFile, "webhooks.bearer_token_file", EnvPrefix+"WEBHOOKS_BEARER_TOKEN", &c.Secrets.WebhookBearerToken)
	read(c.Webhooks.BasicAuth.PasswordFile, "webhooks.basic_auth.password_file", EnvPrefix+"WEBHOOKS_BASIC_AUTH_PASSWORD", &c.Secrets.WebhookBasicPassword)
	read(c.Webhooks.HMAC.SecretFile, "webhooks.hmac.secret_file", EnvPrefix+"WEBHOOKS_HMAC_SECRET", &c.Secrets.WebhookHMACSecret)
	read(c.Defender.ClientSecretFile, "defender.client_secret_file", EnvPrefix+"DEFENDER_CLIENT_SECRET", &c.Secrets.DefenderClientSecret)
	l.readNotifierSecrets(read)
	// The certificate file holds a private key: it is read once, here,
	// and its content checked by the Defender client's rules.
	if f := c.Defender.CertificateFile; f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			l.problem("defender.certificate_file", "cannot read %q: %v", f, errors.Unwrap(err))
			l.decodeFailed["defender.certificate_file"] = true
			return
		}
		c.Secrets.DefenderCertificatePEM = pem
	}
}

var drivers = store.Drivers

func oneOf(v string, set []string) bool {
	for _, s := range set {
		if v == s {
			return true
		}
	}
	return false
}

func quoteList(set []string) string {
	q := make([]string, len(set))
	for i, s := range set {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// validate reports every problem of the configuration at its key. Each
// part is checked by the package that uses it (handlers.Settings.Validate,
// defender.Config.Problems, logging.Check*), the very checks serve's
// constructors run, so that `check` refuses what `serve` would; the rules of
// the store and the pipeline, which config cannot import, are here.
func (l *loader) validate() {
	c := l.cfg
	l.validateHandlers()

	if !oneOf(c.Store.Driver, drivers) {
		l.problem("store.driver", "unknown driver %q (want one of %s)", c.Store.Driver, quoteList(drivers))
	}
	if c.Store.DSN == "" {
		l.problem("store.dsn", "must not be empty")
	} else if c.Store.Driver == "postgres" && !strings.HasPrefix(c.Store.DSN, "postgres://") && !strings.HasPrefix(c.Store.DSN, "postgresql://") && !strings.Contains(c.Store.DSN, "=") {
		l.problem("store.dsn", "postgres needs a postgres:// URL or a key=value connection string")
	}

	switch r := c.Store.Retention; {
	case r <= 0:
		l.problem("store.retention", "must be positive, got %s (there is no \"keep forever\": write a long period such as 3650d)", r)
	case r < MinRetention:
		l.problem("store.retention", "must be at least 1d, got %s", r)
	case r < c.Defender.ActionTimeout:
		// An alert is retried through a Defender outage for up to
		// action_timeout, and its evaluation job names the alerts decided
		// beside it: they must outlive it.
		l.problem("store.retention", "must be at least defender.action_timeout (%s): an alert may wait that long for its decision, got %s", c.Defender.ActionTimeout, r)
	}

	if len(c.Rules.Files) == 0 {
		l.problem("rules.files", "at least one rules file is required")
	}

	l.validateDefender()
	d := c.Defender
	if d.PollInterval <= 0 {
		l.problem("defender.poll_interval", "must be positive, got %s", d.PollInterval)
	}
	if d.ActionTimeout <= 0 {
		l.problem("defender.action_timeout", "must be positive, got %s", d.ActionTimeout)
	} else if d.PollInterval > 0 && d.ActionTimeout < d.PollInterval {
		l.problem("defender.action_timeout", "must be at least poll_interval (%s), got %s", d.PollInterval, d.ActionTimeout)
	}
	if minSettle := defender.DefaultTimeout + time.Second; d.PostSettle < minSettle {
		// Sooner, a request still in flight could create its action after
		// the look that did not find it, and the second POST a second one.
		l.problem("defender.post_settle", "must be at least %s (the request timeout and a second), got %s", minSettle, d.PostSettle)
	}

	if c.Safety.MaxCollectionsPerHour <= 0 {
		l.problem("safety.max_collections_per_hour", "must be positive, got %d", c.Safety.MaxCollectionsPerHour)
	}
	if c.Safety.MaxMachinesPer10m <= 0 {
		l.problem("safety.max_machines_per_10m", "must be positive, got %d", c.Safety.MaxMachinesPer10m)
	}

	l.validateNotify()
	if err := logging.CheckLevel(c.Log.Level); err != nil {
		l.problem("log.level", "%v", err)
	}
	if err := logging.CheckFormat(c.Log.Format); err != nil {
		l.problem("log.format", "%v", err)
	}
}

// validateHandlers reports the problems of the server.*, admin.* and
// webhooks.* keys, found by handlers.Settings.Validate. A secret that could
// not be read is reported already: "no authentication" would only repeat
// it, so that consequence is left out.
func (l *loader) validateHandlers() {
	webhookSecretFailed := l.decodeFailed["webhooks.bearer_token_file"] || l.decodeFailed["webhooks.basic_auth.password_file"] || l.decodeFailed["webhooks.hmac.secret_file"]
	adminFailed := l.decodeFailed["admin.bearer_token_file"] || l.decodeFailed["server.admin_listen"] || l.decodeFailed["admin.allow_unauthenticated"]
	for _, p := range l.cfg.Handlers().Validate() {
		if webhookSecretFailed && errors.Is(p, handlers.ErrNoWebhookAuth) || adminFailed && errors.Is(p, handlers.ErrOpenAdminAPI) {
			continue
		}
		l.problem(p.Key, "%s", p.Msg)
	}
}

// validateDefender reports the problems of the Defender client's keys,
// found by defender.Config.Problems. Without a client (dry-run mode and no
// credential) the required keys are not required; a credential that could
// not be read is reported already.
func (l *loader) validateDefender() {
	c := l.cfg
	dc, client := c.DefenderClient()
	credFailed := l.decodeFailed["defender.client_secret_file"] || l.decodeFailed["defender.certificate_file"]
	for _, p := range dc.Problems() {
		msg := p.Msg
		switch {
		case errors.Is(p, defender.ErrRequired):
			if !client {
				continue
			}
			msg = "required unless defender.dry_run is true"
			if c.Defender.DryRun {
				msg = "required when a Defender credential is set: the client is built even with defender.dry_run"
			}
		case errors.Is(p, defender.ErrNoCredential):
			if !client || credFailed {
				continue
			}
			msg = "no Defender credential: set client_secret_file (or " + EnvPrefix + "DEFENDER_CLIENT_SECRET), certificate_file or federated_token_file, or turn on defender.dry_run"
		case p.Field == "certificate_file":
			msg = fmt.Sprintf("%q: %s", c.Defender.CertificateFile, p.Msg)
		}
		l.problem("defender."+p.Field, "%s", msg)
	}
}

// Keys lists every key path of the configuration with its environment
// variable, in declaration order (for documentation and tests).
func Keys() []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" || f.Tag.Get("env") == "-" {
				continue
			}
			path := name
			if prefix != "" {
				path = prefix + "." + name
			}
			if f.Type.Kind() == reflect.Struct && f.Type.String() != "time.Duration" {
				walk(f.Type, path)
				continue
			}
			out = append(out, path)
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return out
}
