package app

import (
	"context"
	"errors"
	"slices"
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
	log     *zap.Logger
	current func() *rules.Set
	dryRun  bool
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
	missing := defender.MissingPermissions(roles, needed)
	if len(missing) > 0 {
		pc.log.Error("the Defender application lacks permissions the rules need: grant them in Entra ID (application permissions of WindowsDefenderATP, with admin consent)",
			zap.Strings("missing", missing), zap.Strings("granted", roles))
		return
	}
	pc.log.Info("the Defender token grants the permissions the rules need", zap.Strings("needed", needed))
}

// startupTokenTimeout bounds the token fetch at start.
const startupTokenTimeout = 30 * time.Second

// checkTokenAtStart fetches a token once, so that bad credentials or missing
// permissions show at start. A failure is only logged: alerts are still
// accepted, and every call fetches the token again.
func checkTokenAtStart(ctx context.Context, c *defender.Client, log *zap.Logger) {
	tctx, cancel := context.WithTimeout(ctx, startupTokenTimeout)
	defer cancel()
	err := c.CheckToken(tctx)
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
