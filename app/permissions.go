package app

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/rules"
)

// permissionCheck compares the roles of each new Defender access token with
// the permissions the rules in force need, so that a missing permission is
// reported when the responder starts and whenever the token is renewed (about
// hourly), not first by a refused collection in the middle of an incident.
//
// It logs rather than exporting a metric: the metric set is SPEC section 9's
// contract. A refused call is still counted (collections_total{outcome=
// "forbidden"}, defender_requests_total{code="403"}).
type permissionCheck struct {
	log       *zap.Logger
	current   func() *rules.Set
	dryRun    bool
	writeBack bool // defender.write_back: commenting alerts needs its permissions

	mu sync.Mutex
	// onMissing raises permission_missing (the pipeline's NotePermissions);
	// set once the pipeline exists.
	onMissing func(missing []string)
	// missing is what the last MDE and Graph tokens lacked.
	missingMDE, missingGraph []string
}

// raise sets the function that raises the permission_missing event.
func (pc *permissionCheck) raise(fn func(missing []string)) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.onMissing = fn
	if len(pc.missingMDE)+len(pc.missingGraph) > 0 {
		fn(slices.Concat(pc.missingMDE, pc.missingGraph))
	}
}

// report records what a token of one API lacks and raises the union.
func (pc *permissionCheck) report(graph bool, missing []string) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if graph {
		pc.missingGraph = missing
	} else {
		pc.missingMDE = missing
	}
	if pc.onMissing != nil {
		pc.onMissing(slices.Concat(pc.missingMDE, pc.missingGraph))
	}
}

// neededPermissions lists what the rules in set need: reading machines and
// machine actions always (names, attributes, tracking), and the permission
// of every action an enabled rule may send (none in a global dry run, and
// none for a rule in dry run).
func neededPermissions(set *rules.Set, dryRun bool) []string {
	needed := []string{defender.PermissionReadAll}
	if set == nil || dryRun {
		return needed
	}
	for _, r := range set.Rules() {
		if !r.Enabled || r.DryRun {
			continue
		}
		var p string
		if spec, ok := defender.MachineActionByName(string(r.Action)); ok {
			p = spec.Permission
		}
		if p != "" && !slices.Contains(needed, p) {
			needed = append(needed, p)
		}
	}
	return needed
}

// roles is the defender.WithTokenRoles hook.
func (pc *permissionCheck) roles(roles []string) {
	needed := neededPermissions(pc.current(), pc.dryRun)
	if pc.writeBack {
		needed = append(needed, defender.PermissionAlertReadWrite)
	}
	missing := defender.MissingPermissions(roles, needed)
	pc.report(false, missing)
	if len(missing) > 0 {
		pc.log.Error("the Defender application lacks permissions the rules need: grant them in Entra ID (application permissions of WindowsDefenderATP, with admin consent)",
			zap.Strings("missing", missing), zap.Strings("granted", roles))
		return
	}
	pc.log.Info("the Defender token grants the permissions the rules need", zap.Strings("needed", needed))
}

// graphRoles is the defender.WithGraphTokenRoles hook: commenting Graph
// alerts (the write-back) needs SecurityAlert.ReadWrite.All.
func (pc *permissionCheck) graphRoles(roles []string) {
	missing := defender.MissingPermissions(roles, []string{defender.PermissionSecurityAlertReadWrite})
	pc.report(true, missing)
	if len(missing) > 0 {
		pc.log.Error("the Graph token lacks the permission the write-back to Graph alerts needs: grant SecurityAlert.ReadWrite.All (Microsoft Graph application permission, with admin consent)",
			zap.Strings("missing", missing), zap.Strings("granted", roles))
		return
	}
	pc.log.Info("the Graph token grants the permission the write-back needs")
}

// startupTokenTimeout bounds the token fetch at start.
const startupTokenTimeout = 30 * time.Second

// checkTokenAtStart fetches a token once, so that bad credentials or missing
// permissions show at start. A failure is only logged: alerts are still
// accepted, and every call fetches the token again.
func checkTokenAtStart(ctx context.Context, c *defender.Client, writeBack bool, log *zap.Logger) {
	tctx, cancel := context.WithTimeout(ctx, startupTokenTimeout)
	defer cancel()
	err := c.CheckToken(tctx)
	if err == nil && writeBack {
		if gerr := c.CheckGraphToken(tctx); gerr != nil && ctx.Err() == nil {
			log.Warn("cannot get a Microsoft Graph token at start (defender.write_back): comments on Graph alerts will fail until it can", zap.Error(gerr))
		}
	}
	if err == nil || ctx.Err() != nil { // not when shutting down
		return
	}
	var de *defender.Error
	if errors.As(err, &de) && (de.Outcome == defender.OutcomeUnauthorized || de.Outcome == defender.OutcomePermanent) {
		// Refused credentials (a wrong secret, an unregistered
		// certificate) need an administrator; retrying will not help.
		log.Error("Defender refused the credentials at start; alerts are accepted, but no action can be sent until they are fixed", zap.Error(err))
		return
	}
	log.Warn("cannot get a Defender token at start; alerts are accepted and calls will try again", zap.Error(err))
}
