package defender

import (
	"slices"

	"github.com/golang-jwt/jwt/v5"
)

// The MDE application permissions (the access token's roles) the
// responder's calls need: one per action, and reading machines and machine
// actions (resolving names, attributes, tracking, packages).
const (
	PermissionCollectForensics  = "Machine.CollectForensics"
	PermissionIsolate           = "Machine.Isolate"
	PermissionScan              = "Machine.Scan"
	PermissionRestrictExecution = "Machine.RestrictExecution"
	PermissionReadAll           = "Machine.Read.All"
	// permissionReadWriteAll grants everything PermissionReadAll does.
	permissionReadWriteAll = "Machine.ReadWrite.All"
)

// Permissions is the closed set of permissions the responder checks, in a
// stable order (a metric label).
var Permissions = []string{PermissionCollectForensics, PermissionIsolate, PermissionScan, PermissionRestrictExecution, PermissionReadAll}

// tokenRoles reads the roles claim of an access token. The token is not
// verified: it was just received from the login endpoint over TLS, and the
// roles are read only to tell the operator early what the application may
// do; Defender itself decides. A JWT without a roles claim grants nothing
// (Entra ID leaves the claim out when no application permission is
// consented); ok is false for a token that is not a JWT, of which nothing
// can be told.
func tokenRoles(access string) (roles []string, ok bool) {
	var claims struct {
		jwt.RegisteredClaims
		Roles []string `json:"roles"`
	}
	if _, _, err := jwt.NewParser().ParseUnverified(access, &claims); err != nil {
		return nil, false
	}
	return claims.Roles, true
}

// MissingPermissions returns those of needed that roles do not grant, in
// the order of needed.
func MissingPermissions(roles, needed []string) []string {
	var missing []string
	for _, p := range needed {
		if slices.Contains(roles, p) || (p == PermissionReadAll && slices.Contains(roles, permissionReadWriteAll)) {
			continue
		}
		missing = append(missing, p)
	}
	return missing
}
