package pipeline

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/store"
)

// DefaultRetentionInterval is the default of Config.RetentionInterval.
const DefaultRetentionInterval = 10 * time.Minute

// storeStatsEvery is how often responder_store_rows and responder_store_bytes
// are refreshed.
const storeStatsEvery = time.Minute

// longestCooldown returns the longest cooldown of the rules in force (false
// when none is known: retention then deletes no cooldown row).
func (p *Pipeline) longestCooldown() (time.Duration, bool) {
	if p.rules == nil {
		return 0, false
	}
	set := p.rules.Current()
	if set == nil {
		return 0, false
	}
	var longest time.Duration
	for _, r := range set.Rules() {
		longest = max(longest, r.Cooldown)
	}
	return longest, true
}

// retentionLoop runs a retention pass (store.Retainer) a tenth of the
// interval after start, then every interval, and refreshes the store
// gauges, until ctx ends.
func (p *Pipeline) retentionLoop(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.storeStatsLoop(ctx)
	}()
	defer wg.Wait()

	r := p.store.NewRetainer(p.cfg.Retention, p.longestCooldown, p.cfg.Now)
	t := time.NewTimer(p.cfg.RetentionInterval / 10)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		res, err := r.Pass(ctx)
		fields := []zap.Field{
			zap.Duration("retention", r.Retention()),
			zap.Int64("audit_deleted", res.Audit), zap.Int64("alerts_deleted", res.Alerts),
			zap.Int64("cooldowns_deleted", res.Cooldowns), zap.Int64("notifications_deleted", res.Notifications), zap.Int("batches", res.Batches),
			zap.Duration("took", time.Since(start).Round(time.Millisecond)),
		}
		switch {
		case errors.Is(err, store.ErrRetentionBusy):
			p.log.Debug("retention pass skipped: another replica is running one")
		case err != nil && ctx.Err() != nil:
			return // stopping
		case err != nil:
			p.log.Warn("retention pass failed; what it deleted stays deleted, the rest waits for the next pass", append(fields, zap.Error(err))...)
		default:
			p.log.Info("retention pass", fields...)
		}
		t.Reset(p.cfg.RetentionInterval)
	}
}

// storeStatsLoop refreshes responder_store_rows and responder_store_bytes
// at once, then every storeStatsEvery, until ctx ends. A table that cannot
// be counted keeps its last value; the others are still set.
func (p *Pipeline) storeStatsLoop(ctx context.Context) {
	sr := p.store.NewStatsReader()
	defer sr.Close()
	t := time.NewTicker(storeStatsEvery)
	defer t.Stop()
	for {
		if err := p.refreshStoreStats(ctx, sr); err != nil && ctx.Err() == nil {
			p.log.Warn("reading the store size failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refreshStoreStats sets the store gauges from sr. A table that cannot be
// counted keeps its last value; the others are still set.
func (p *Pipeline) refreshStoreStats(ctx context.Context, sr *store.StatsReader) error {
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, size, err := sr.Read(qctx)
	for table, n := range rows {
		p.m.StoreRows.WithLabelValues(table).Set(float64(n))
	}
	if size >= 0 {
		p.m.StoreBytes.Set(float64(size))
	}
	return err
}
