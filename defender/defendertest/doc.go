// Package defendertest simulates the Microsoft services the responder talks to: the
// Microsoft Entra ID token endpoint (v2 and v1, client secret, certificate client assertion and
// federated workload-identity assertion), the Microsoft Defender for Endpoint (MDE) API
// (machines, machine actions, investigation package download, alerts) and, for write-back, the
// one Microsoft Graph endpoint the responder calls (a comment on an alerts_v2 alert).
//
// The simulator is meant to be faithful: code that passes against it should pass against
// Microsoft. Where Microsoft's behaviour is documented (../shared/reference/defender-api.md) the
// simulator follows it; where it is undocumented the simulator picks the stricter reading, so a
// client that works here does not rely on leniency Microsoft might not offer. Among the
// behaviours reproduced:
//
//   - token requests are checked for tenant, client id, secret or assertion, grant type and
//     scope; the v1 endpoint answers numbers as strings ("expires_in":"3599");
//   - tokens expire by the injectable clock (Options.Now); a token issued for another audience
//     is answered 403 by the API;
//   - action bodies are case-sensitive ({"Comment": ...}); a second action of a type already
//     Pending or InProgress on a machine answers 400 ActiveRequestAlreadyExists;
//   - actions progress Pending -> InProgress -> a chosen terminal status on the clock;
//   - getPackageUri answers 404 until the collection Succeeded, then a value with embedded
//     quote characters, and has its own 2/min, 120/h quota;
//   - every API group has a sliding 100/min, 1500/h quota per app and tenant answered with 429
//     and Retry-After;
//   - errors use MDE's envelope {"error":{"code","message","target"}};
//   - an alert store (AddAlert, Alert) serves GET and PATCH /api/alerts/{id}: PATCH needs
//     Alert.ReadWrite.All (or the update-alert page's spelling Alerts.ReadWrite.All), takes only
//     the keys status, assignedTo, classification, determination and comment, case-sensitive
//     (a "Comment" key is 400 InvalidRequestBody), and appends the comment to the alert;
//   - Graph's POST /v1.0/security/alerts_v2/{id}/comments is served on the same listener (point
//     the Graph URL at the simulator). Tokens are issued per audience, as Entra ID does: the
//     scope "https://graph.microsoft.com/.default" (Options.GraphHost, or Graph's app id) gets a
//     Graph token carrying the Graph roles (SetGraphRoles, default SecurityAlert.ReadWrite.All),
//     whatever URL the simulator is served at, exactly as the MDE audience does not follow the
//     API URL. The simulator never issues a token for its own URL: a client must ask for the
//     real Graph scope. Graph answers a token of another audience 401
//     InvalidAuthenticationToken, MDE answers a Graph token 403, each in its own error shape
//     (Graph: {"error":{"code","message","innerError":{"date","request-id",...}}}); the body
//     must carry "@odata.type": "microsoft.graph.security.alertComment" and "comment" and
//     nothing else; the answer is 200 with every comment of the alert;
//   - faults (status, delay, dropped connection) can be injected by path, and every request is
//     logged without its Authorization header or secrets.
//
// Use [NewServer] in tests and [Simulator.Serve] to run it standalone (responder serve --dev).
package defendertest
