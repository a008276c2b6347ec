package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/responder-dev/responder/audit"
)

// TestAuditPaging walks the audit trail page by page with before_id, on
// both drivers: every entry once, newest first, "more" and next_before_id
// on every page but the last, and filters that hold across pages.
func TestAuditPaging(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{DriverSQLite, DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			store := openTestStore(t, driver)

			// 25 entries: machines a and b alternate; every third is a collect.
			const n = 25
			machine := func(i int) string { return fmt.Sprintf("%040d", i%2) }
			decision := func(i int) audit.Decision {
				if i%3 == 0 {
					return audit.Collect
				}
				return audit.NoMatch
			}
			now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
			ids := make([]int64, n)
			for i := range n {
				err := store.DB.QueryRowContext(ctx, insertEntrySQL, int64(i+1), ms(now.Add(time.Duration(i)*time.Second)),
					"defender", fmt.Sprintf("da%d", i), machine(i), "", "r", "", decision(i), "test", "", 0, audit.Done, "").Scan(&ids[i])
				if err != nil {
					t.Fatal(err)
				}
			}

			// walk pages through the filter and returns the ids seen.
			walk := func(f Filter, wantPages int) []int64 {
				t.Helper()
				var seen []int64
				for pages := 1; ; pages++ {
					p, err := store.EntriesPage(ctx, f)
					if err != nil {
						t.Fatal(err)
					}
					if len(p.Actions) > f.Limit {
						t.Fatalf("page of %d entries, limit %d", len(p.Actions), f.Limit)
					}
					for i, e := range p.Actions {
						if f.BeforeID > 0 && e.ID >= f.BeforeID {
							t.Fatalf("entry %d on the page before id %d", e.ID, f.BeforeID)
						}
						if i > 0 && e.ID >= p.Actions[i-1].ID {
							t.Fatalf("page not newest first: %d after %d", e.ID, p.Actions[i-1].ID)
						}
						seen = append(seen, e.ID)
					}
					if !p.More {
						if p.NextBeforeID != 0 {
							t.Fatalf("last page with next_before_id %d", p.NextBeforeID)
						}
						if pages != wantPages {
							t.Fatalf("%d pages, want %d", pages, wantPages)
						}
						return seen
					}
					if last := p.Actions[len(p.Actions)-1].ID; p.NextBeforeID != last || len(p.Actions) != f.Limit {
						t.Fatalf("page with more: next_before_id %d, last id %d, %d entries", p.NextBeforeID, last, len(p.Actions))
					}
					f.BeforeID = p.NextBeforeID
				}
			}
			want := func(keep func(i int) bool) []int64 {
				var out []int64
				for i := n - 1; i >= 0; i-- {
					if keep(i) {
						out = append(out, ids[i])
					}
				}
				return out
			}
			check := func(name string, got, want []int64) {
				t.Helper()
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("%s: ids\n got %v\nwant %v", name, got, want)
				}
			}
			all := func(int) bool { return true }
			check("pages of 10", walk(Filter{Limit: 10}, 3), want(all))
			check("pages of 5: the last page is full and says no more", walk(Filter{Limit: 5}, 5), want(all))
			check("one page of all", walk(Filter{Limit: n}, 1), want(all))
			check("machine a", walk(Filter{Limit: 4, MachineID: machine(0)}, 4), want(func(i int) bool { return i%2 == 0 }))
			check("collect decisions", walk(Filter{Limit: 3, Status: string(audit.Collect)}, 3), want(func(i int) bool { return i%3 == 0 }))

			// A page before an id in the middle, and before the oldest.
			p, err := store.EntriesPage(ctx, Filter{Limit: 100, BeforeID: ids[10]})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Actions) != 10 || p.Actions[0].ID != ids[9] || p.More {
				t.Fatalf("before id %d: %d entries, first %d, more %v", ids[10], len(p.Actions), p.Actions[0].ID, p.More)
			}
			p, err = store.EntriesPage(ctx, Filter{Limit: 100, BeforeID: ids[0]})
			if err != nil || len(p.Actions) != 0 || p.More || p.Actions == nil {
				t.Fatalf("before the oldest: %+v %v (want an empty list, not null)", p, err)
			}
		})
	}
}
