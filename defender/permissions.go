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
	// PermissionAlertReadWrite lets the application comment on Defender
	// alerts (write-back, PATCH /api/alerts/{id}).
	PermissionAlertReadWrite = "Alert.ReadWrite.All"
	// permissionAlertsReadWrite is how the update-alert page spells
	// PermissionAlertReadWrite; a token naming it grants it.
	permissionAlertsReadWrite = "Alerts.ReadWrite.All"
	// PermissionSecurityAlertReadWrite is the Microsoft Graph application
	// permission to comment on Graph alerts (POST
	// security/alerts_v2/{id}/comments). It is a role of the Graph token,
	// not of the MDE one (WithGraphTokenRoles).
	PermissionSecurityAlertReadWrite = "SecurityAlert.ReadWrite.All"
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

// grantedAlso names, for a permission, a role that grants it too.
var grantedAlso = map[string]string{
	PermissionReadAll:        permissionReadWriteAll,
	PermissionAlertReadWrite: permissionAlertsReadWrite,
}

// MissingPermissions returns those of needed that roles do not grant, in
// the order of needed. It reads the roles of one token: MDE permissions
// from the MDE token, PermissionSecurityAlertReadWrite from the Graph one.
func MissingPermissions(roles, needed []string) []string {
	var missing []string
	for _, p := range needed {
		if alt, ok := grantedAlso[p]; slices.Contains(roles, p) || ok && slices.Contains(roles, alt) {
			continue
		}
		missing = append(missing, p)
	}
	return missing
}
