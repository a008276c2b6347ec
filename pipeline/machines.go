package pipeline

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/responder-dev/responder/alert"
)

// machineCache keeps machine attributes for a while (SPEC 6.2: TTL 10m).
type machineCache struct {
	ttl time.Duration
	now func() time.Time
	mu  sync.Mutex
	m   map[string]cachedMachine
}

type cachedMachine struct {
	machine alert.Machine
	at      time.Time
}

func newMachineCache(ttl time.Duration, now func() time.Time) *machineCache {
	return &machineCache{ttl: ttl, now: now, m: map[string]cachedMachine{}}
}

func (c *machineCache) get(id string) (*alert.Machine, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || c.now().Sub(e.at) > c.ttl {
		return nil, false
	}
	m := e.machine
	return &m, true
}

func (c *machineCache) put(m alert.Machine) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) > 50000 {
		// Bound memory in a storm: drop expired entries, then everything.
		for k, e := range c.m {
			if c.now().Sub(e.at) > c.ttl {
				delete(c.m, k)
			}
		}
		if len(c.m) > 50000 {
			c.m = map[string]cachedMachine{}
		}
	}
	c.m[strings.ToLower(m.ID)] = cachedMachine{machine: m, at: c.now()}
}

func (p *Pipeline) machine(ctx context.Context, id string) (*alert.Machine, error) {
	if m, ok := p.machines.get(id); ok {
		return m, nil
	}
	release, err := p.lookupSlot(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	if m, ok := p.machines.get(id); ok {
		return m, nil // read by another goroutine meanwhile
	}
	dm, err := p.api.GetMachine(ctx, id)
	if err != nil {
		return nil, err
	}
	m := dm.Alert()
	p.machines.put(m)
	return &m, nil
}

// unknownMachineName is the reason of a decision whose machine name no
// Defender machine has (the evaluator's and the evaluate API's).
func unknownMachineName(name string) string {
	return fmt.Sprintf("no Defender machine is named %q", name)
}

// resolveName sets a.MachineID from a.MachineName through Defender (several
// matches: the most recently seen active machine), within a lookup slot, and
// caches the machine's attributes. It returns a note for the decision.
func (p *Pipeline) resolveName(ctx context.Context, a *alert.Alert) (string, error) {
	release, err := p.lookupSlot(ctx)
	if err != nil {
		return "", err
	}
	m, err := p.api.FindMachineByName(ctx, a.MachineName)
	release()
	if err != nil {
		return "", err
	}
	a.MachineID = strings.ToLower(m.ID)
	p.machines.put(m.Alert())
	return fmt.Sprintf("machine name %q resolved to %s", a.MachineName, a.MachineID), nil
}

// lookupSlot waits for one of the maxLookups machine-read slots.
func (p *Pipeline) lookupSlot(ctx context.Context) (func(), error) {
	select {
	case p.lookups <- struct{}{}:
		return func() { <-p.lookups }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
