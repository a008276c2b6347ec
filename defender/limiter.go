package defender

import "github.com/responder-dev/responder/quota"

// Clock tells the time and waits. The client uses it for the quota limiters,
// the token cache and the federated token file checks; tests inject a fake.
type Clock = quota.Clock

// RealClock is the Clock of the time package.
type RealClock = quota.RealClock

// Group is an API group that MDE counts against one quota.
type Group string

// The API groups, each with its own quota (reference section 2).
const (
	// GroupActions: collectInvestigationPackage, isolate, unisolate,
	// runAntiVirusScan, restrict/unrestrictCodeExecution (100/min, 1500/h).
	GroupActions Group = "actions"
	// GroupMachineActions: GET machineactions and machineactions/{id}.
	GroupMachineActions Group = "machine_actions"
	// GroupMachines: GET machines and machines/{id}.
	GroupMachines Group = "machines"
	// GroupPackageURI: getPackageUri (2/min, 120/h).
	GroupPackageURI Group = "package_uri"
	// GroupAlerts: PATCH alerts/{id}, the comment on a Defender alert
	// (100/min, 1500/h).
	GroupAlerts Group = "alerts"
	// GroupGraphAlerts: POST Graph security/alerts_v2/{id}/comments, the
	// comment on a Graph alert. Graph documents no quota of its own for it:
	// the client keeps it to the API's (100/min, 1500/h).
	GroupGraphAlerts Group = "graph_alerts"
)

// Groups lists every API group.
var Groups = []Group{GroupActions, GroupMachineActions, GroupMachines, GroupPackageURI, GroupAlerts, GroupGraphAlerts}

// The quota of getPackageUri.
const (
	PackageURIPerMinute = 2
	PackageURIPerHour   = 120
)
