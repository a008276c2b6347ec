package rules

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/internal/yamlx"
	"github.com/responder-dev/responder/metrics"
)

// DefaultDebounce is how long Run waits after the last file event before it
// reloads, so that an editor's or Kubernetes' several writes load once.
const DefaultDebounce = 250 * time.Millisecond

// ByFileWatcher and BySignal are the "by" of the reloads the rule file
// watcher and SIGHUP make.
const (
	ByFileWatcher = "file watcher"
	BySignal      = "signal"
)

// Manager holds the rule set in force and replaces it on reload, only ever
// with a completely valid set. It is safe for concurrent use: evaluations
// read Current while a reload runs and always see one whole set.
type Manager struct {
	paths   []string
	metrics *metrics.Metrics
	logger  *zap.Logger
	current atomic.Pointer[Set]
	mu      sync.Mutex // serialises reloads

	// Debounce is the quiet time Run waits for after a file event. Set it
	// before Run; 0 means DefaultDebounce.
	Debounce time.Duration

	now         func() time.Time
	afterReload func(changed bool, err error) // test hook, called under mu
	watching    func()                        // test hook, called once Run watches
}

// NewManager loads the rule files once. It returns an error, listing every
// problem, if that load fails. m and logger may be nil.
func NewManager(paths []string, m *metrics.Metrics, logger *zap.Logger) (*Manager, error) {
	return newManager(paths, m, logger, time.Now)
}

func newManager(paths []string, m *metrics.Metrics, logger *zap.Logger, now func() time.Time) (*Manager, error) {
	if m == nil {
		m = metrics.New(nil)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	mg := &Manager{
		paths:   append([]string(nil), paths...),
		metrics: m,
		logger:  logger.Named("rules"),
		now:     now,
	}
	srcs, err := readSources(mg.paths)
	var set *Set
	if err == nil {
		set, err = compileSources(srcs, mg.now())
	}
	if err != nil {
		m.RulesReloadOK.Set(0)
		return nil, err
	}
	mg.install(set)
	mg.logger.Info("rules loaded", zap.Int("rules", set.Len()), zap.Strings("files", mg.paths))
	return mg, nil
}

// Current returns the rule set in force. It is never nil.
func (mg *Manager) Current() *Set { return mg.current.Load() }

// Paths returns the rule files, in merge order.
func (mg *Manager) Paths() []string { return append([]string(nil), mg.paths...) }

func (mg *Manager) install(set *Set) {
	mg.current.Store(set)
	mg.metrics.InitRules(set.Names())
	mg.metrics.RulesLoaded.Set(float64(set.Len()))
	mg.succeeded(set.files[0].LoadedAt)
}

func (mg *Manager) succeeded(at time.Time) {
	mg.metrics.RulesReloadOK.Set(1)
	mg.metrics.RulesReloadSuccess.Set(float64(at.UnixNano()) / 1e9)
}

// Reload reads and validates every rule file and, when all are valid, swaps
// the new set in atomically. On error the set in force stays, the problems
// are logged and responder_rules_last_reload_successful is set to 0. When no
// file changed (same SHA-256), the set is kept but the reload still counts as
// a success. The file watcher, SIGHUP and POST /api/v1/reload all call it.
// Reload logs its outcome itself; callers need not log the returned error.
func (mg *Manager) Reload() error { return mg.ReloadBy("") }

// ReloadBy is Reload with who asked for it in its log lines: by ("signal",
// "file watcher", an admin token's name) and the fields given (the admin
// API adds remote_addr).
func (mg *Manager) ReloadBy(by string, fields ...zap.Field) error {
	mg.mu.Lock()
	defer mg.mu.Unlock()
	log := mg.logger
	if by != "" {
		log = log.With(append([]zap.Field{zap.String("by", by)}, fields...)...)
	}
	changed, err := mg.reload(log)
	if mg.afterReload != nil {
		mg.afterReload(changed, err)
	}
	return err
}

func (mg *Manager) reload(log *zap.Logger) (bool, error) {
	old := mg.current.Load()
	srcs, err := readSources(mg.paths)
	if err == nil && sameFiles(old, srcs) {
		mg.succeeded(mg.now())
		log.Info("rules unchanged", zap.Int("rules", old.Len()))
		return false, nil
	}
	var set *Set
	if err == nil {
		set, err = compileSources(srcs, mg.now())
	}
	if err != nil {
		mg.metrics.RulesReloadOK.Set(0)
		log.Error("rules reload failed; the previous rules stay in force",
			zap.Strings("problems", problems(err)), zap.Int("rules", old.Len()))
		return false, err
	}
	mg.install(set)
	log.Info("rules reloaded", zap.Int("rules", set.Len()), zap.Strings("files", mg.paths))
	return true, nil
}

func sameFiles(set *Set, srcs []source) bool {
	if set == nil || len(set.files) != len(srcs) {
		return false
	}
	for i, s := range srcs {
		if set.files[i].Path != s.path || set.files[i].SHA256 != s.hash {
			return false
		}
	}
	return true
}

// problems splits a load error into one line per problem, for logs.
func problems(err error) []string {
	var es yamlx.Errors
	if errors.As(err, &es) {
		out := make([]string, len(es))
		for i, e := range es {
			out[i] = e.Error()
		}
		return out
	}
	return strings.Split(err.Error(), "\n")
}

// Run watches the directories of the rule files (a Kubernetes ConfigMap
// replaces its files by swapping a `..data` symlink, which a watch on the
// file itself would miss) and reloads after events settle for Debounce.
// It returns nil when ctx is done, or an error if the watch cannot start.
func (mg *Manager) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching rule files: %w", err)
	}
	defer w.Close()

	names := map[string]bool{}
	dirs := map[string]bool{}
	for _, p := range mg.paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("watching rule file %s: %w", p, err)
		}
		names[filepath.Base(abs)] = true
		if !dirs[filepath.Dir(abs)] {
			if err := w.Add(filepath.Dir(abs)); err != nil {
				return fmt.Errorf("watching rule directory %s: %w", filepath.Dir(abs), err)
			}
			dirs[filepath.Dir(abs)] = true
		}
		// A symlink to a file elsewhere: watch the target's directory too.
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			names[filepath.Base(real)] = true
			if dir := filepath.Dir(real); !dirs[dir] && w.Add(dir) == nil {
				dirs[dir] = true
			}
		}
	}
	debounce := mg.Debounce
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	timer := time.NewTimer(debounce)
	timer.Stop()
	defer timer.Stop()
	if mg.watching != nil {
		mg.watching()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			base := filepath.Base(ev.Name)
			if ev.Op == fsnotify.Chmod || !names[base] && !strings.HasPrefix(base, "..") {
				continue
			}
			mg.logger.Debug("rule file event", zap.String("file", ev.Name), zap.String("op", ev.Op.String()))
			timer.Reset(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			mg.logger.Warn("rule file watch error", zap.Error(err))
		case <-timer.C:
			_ = mg.ReloadBy(ByFileWatcher) // logged by Reload
		}
	}
}
