package store

import (
	"maps"
	"slices"
	"testing"

	"github.com/responder-dev/responder/metrics"
)

// TestStoreTablesMatchMetrics: every table label of responder_store_rows
// has its table, and no table is counted under a label the metric lacks.
func TestStoreTablesMatchMetrics(t *testing.T) {
	t.Parallel()
	if got := slices.Sorted(maps.Keys(storeTables)); !slices.Equal(got, slices.Sorted(slices.Values(metrics.StoreTables))) {
		t.Fatalf("storeTables %v and metrics.StoreTables %v differ", got, metrics.StoreTables)
	}
}
