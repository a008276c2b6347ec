// Package defendertest simulates the two Microsoft services the responder talks to: the
// Microsoft Entra ID token endpoint (v2 and v1, client secret, certificate client assertion and
// federated workload-identity assertion) and the Microsoft Defender for Endpoint (MDE) API
// (machines, machine actions, investigation package download).
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
//   - faults (status, delay, dropped connection) can be injected by path, and every request is
//     logged without its Authorization header or secrets.
//
// Use [NewServer] in tests and [Simulator.Serve] to run it standalone (responder serve --dev).
package defendertest
