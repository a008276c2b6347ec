package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/config"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/notify"
	"github.com/responder-dev/responder/pipeline"
)

// devNotifier is the notifier --dev adds: it writes every message to the
// log, so that the demo shows the whole loop.
const devNotifier = "dev-log"

// notifierSet builds and reloads the notifiers in force: those of the
// configuration, the write-back when defender.write_back is on, and the
// log notifier of --dev.
type notifierSet struct {
	path   string         // the config file ("" for none)
	base   *config.Config // --dev's base configuration, else nil
	dev    bool
	p      *pipeline.Pipeline
	client *defender.Client // nil without a Defender client
	log    *zap.Logger
}

// build returns the notifiers of cfg.
func (s *notifierSet) build(cfg *config.Config) ([]notify.Notifier, error) {
	opts := []notify.Option{notify.WithUserAgent(UserAgent()), notify.WithLogger(s.log.Named("notify"))}
	var list []notify.Notifier
	settings := cfg.Notifiers()
	if s.dev && !slices.ContainsFunc(settings, func(n notify.Settings) bool { return n.Name == devNotifier }) {
		settings = append(settings, notify.Settings{Name: devNotifier, Type: "log"})
	}
	for _, ns := range settings {
		n, err := notify.New(ns, opts...)
		if err != nil {
			return nil, fmt.Errorf("notifier %q: %w", ns.Name, err)
		}
		list = append(list, n)
	}
	if cfg.Defender.WriteBack && s.client != nil {
		tmpl, err := pipeline.ParseWriteBackComment(cfg.Defender.WriteBackComment)
		if err != nil {
			return nil, fmt.Errorf("defender.write_back_comment: %w", err)
		}
		list = append(list, s.p.WriteBack(s.client, tmpl))
	}
	return list, nil
}

// apply puts the notifiers of cfg in force.
func (s *notifierSet) apply(cfg *config.Config) error {
	list, err := s.build(cfg)
	if err != nil {
		return err
	}
	if err := s.p.SetNotifiers(list); err != nil {
		return err
	}
	names := make([]string, len(list))
	for i, n := range list {
		names[i] = n.Name() + " (" + n.Type() + ")"
	}
	s.log.Info("notifiers in force", zap.Strings("notifiers", names))
	return nil
}

// reload reads the configuration file again and puts its notifiers in
// force, with the rules (SIGHUP, POST /api/v1/reload, a rules file
// change). A configuration with a problem changes nothing. The other keys
// take effect on a restart.
func (s *notifierSet) reload() error {
	cfg, err := config.Load(s.path, s.base, os.LookupEnv)
	if err != nil {
		s.log.Error("notifiers not reloaded: the configuration has problems; the notifiers in force stay", zap.Error(err))
		return fmt.Errorf("notifiers: %w", err)
	}
	if err := s.apply(cfg); err != nil {
		s.log.Error("notifiers not reloaded; the notifiers in force stay", zap.Error(err))
		return fmt.Errorf("notifiers: %w", err)
	}
	return nil
}

// notifyTestTimeout bounds `responder notify test`.
const notifyTestTimeout = 30 * time.Second

// cmdNotify runs `responder notify test NAME`: it sends a sample message to
// one configured notifier and prints the receiver's answer, so that an
// operator can check a URL and a secret before relying on them.
func cmdNotify(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "test" {
		fmt.Fprintln(stderr, "usage: responder notify test NAME [--config FILE] [--event KIND]")
		return 2
	}
	fs := newFlagSet("notify test", stderr)
	configPath := fs.String("config", "", "config file (default responder.yaml when present)")
	event := fs.String("event", string(notify.Collected), "kind of sample event: "+strings.Join(kindNames(), ", "))
	name, rest := "", args[1:]
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		name, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if fs.NArg() > 0 || name == "" {
		fmt.Fprintln(stderr, "usage: responder notify test NAME [--config FILE] [--event KIND]")
		return 2
	}
	kind, ok := notify.ParseKind(*event)
	if !ok {
		fmt.Fprintf(stderr, "responder notify test: unknown event %q (want one of %s)\n", *event, strings.Join(kindNames(), ", "))
		return 2
	}
	path := *configPath
	if path == "" {
		path = defaultConfigPath()
	}
	cfg, err := config.Load(path, nil, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "responder notify test: invalid configuration: %s\n", oneLine(err))
		return 2
	}
	return sendTest(cfg, name, kind, stdout, stderr)
}

// sendTest sends the sample event of kind to notifier name of cfg.
func sendTest(cfg *config.Config, name string, kind notify.Kind, stdout, stderr io.Writer) int {
	var names []string
	for _, s := range cfg.Notifiers() {
		names = append(names, s.Name)
		if s.Name != name {
			continue
		}
		n, err := notify.New(s, notify.WithUserAgent(UserAgent()), notify.WithLogger(zap.NewNop()))
		if err != nil {
			fmt.Fprintf(stderr, "responder notify test: %s: %v\n", name, err)
			return 2
		}
		ev := notify.Sample(kind, time.Now().UTC())
		ctx, cancel := context.WithTimeout(context.Background(), notifyTestTimeout)
		defer cancel()
		answer, err := n.Send(ctx, ev)
		fmt.Fprintf(stdout, "sent a sample %s event (id %s) to %s (%s)\n", kind, ev.ID, name, s.Type)
		if err != nil {
			var ne *notify.Error
			if errors.As(err, &ne) && ne.Status != 0 {
				fmt.Fprintf(stdout, "receiver answered %d: %s\n", ne.Status, ne.Body)
			}
			fmt.Fprintf(stderr, "responder notify test: %s: delivery failed (%s): %v\n", name, notify.ClassOf(err), err)
			return 1
		}
		fmt.Fprintf(stdout, "receiver answered %d: %s\n", answer.Status, answer.Body)
		return 0
	}
	if len(names) == 0 {
		fmt.Fprintf(stderr, "responder notify test: no notifier is configured (notify: in the configuration)\n")
	} else {
		fmt.Fprintf(stderr, "responder notify test: no notifier named %q (configured: %s)\n", name, strings.Join(names, ", "))
	}
	return 2
}

func kindNames() []string {
	var out []string
	for _, k := range notify.Kinds() {
		out = append(out, string(k))
	}
	return out
}
