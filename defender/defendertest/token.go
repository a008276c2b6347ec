package defendertest

import (
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // x5t is defined as a SHA-1 thumbprint (RFC 7515 section 4.1.7).
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// JWTBearerAssertionType is the client_assertion_type of certificate and federated assertions.
const JWTBearerAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// otherResources are resource identifiers Entra ID knows besides the simulated MDE API. A
// "<resource>/.default" scope for one of them gets a token, whose audience the API then answers
// with 403, as MDE does for a wrong audience (reference section 2, M365#9246).
var otherResources = []string{
	"https://graph.microsoft.com",
	"https://graph.microsoft.us",
	"https://dod-graph.microsoft.us",
	"https://management.azure.com",
	"https://userrequestsgraphapi-prd.trafficmanager.net",
	"https://api.security.microsoft.com",
	"https://api.securitycenter.microsoft.com",
	"https://api-gcc.securitycenter.microsoft.us",
	"https://api-gov.securitycenter.microsoft.us",
}

// tokenError is an Entra ID error answer.
type tokenError struct {
	status int
	name   string // OAuth error, e.g. invalid_client
	code   int    // AADSTS code
	msg    string
}

func (s *Simulator) serveToken(w *recorder, r *http.Request, tenant string, v1 bool) {
	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.Header().Set("Pragma", "no-cache")
	now := s.now()
	tok, resource, terr := s.issueToken(r, tenant, v1, now)
	if terr != nil {
		writeTokenError(w, terr.status, *terr, now)
		return
	}
	secs := int64(s.opts.TokenLifetime / time.Second)
	if secs > 1 {
		secs-- // Entra ID answers 3599 for a one-hour token.
	}
	var body any
	if v1 {
		// The v1 endpoint answers every number as a string (reference section 3).
		body = struct {
			TokenType    string `json:"token_type"`
			ExpiresIn    string `json:"expires_in"`
			ExtExpiresIn string `json:"ext_expires_in"`
			ExpiresOn    string `json:"expires_on"`
			NotBefore    string `json:"not_before"`
			Resource     string `json:"resource"`
			AccessToken  string `json:"access_token"`
		}{
			TokenType:    "Bearer",
			ExpiresIn:    strconv.FormatInt(secs, 10),
			ExtExpiresIn: strconv.FormatInt(secs, 10),
			ExpiresOn:    strconv.FormatInt(now.Unix()+secs, 10),
			NotBefore:    strconv.FormatInt(now.Unix(), 10),
			Resource:     resource,
			AccessToken:  tok,
		}
	} else {
		body = struct {
			TokenType    string `json:"token_type"`
			ExpiresIn    int64  `json:"expires_in"`
			ExtExpiresIn int64  `json:"ext_expires_in"`
			AccessToken  string `json:"access_token"`
		}{"Bearer", secs, secs, tok}
	}
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// issueToken checks a token request and returns the new access token and the resource it
// was requested for.
func (s *Simulator) issueToken(r *http.Request, tenant string, v1 bool, now time.Time) (string, string, *tokenError) {
	if r.Method != http.MethodPost {
		return "", "", &tokenError{http.StatusBadRequest, "invalid_request", 900561,
			fmt.Sprintf("The endpoint only accepts POST, OPTIONS requests. Received a %s request.", r.Method)}
	}
	if !strings.EqualFold(tenant, s.opts.TenantID) {
		return "", "", &tokenError{http.StatusBadRequest, "invalid_request", 90002,
			fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant)}
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" {
		return "", "", missingParam("grant_type")
	}
	if err := r.ParseForm(); err != nil {
		return "", "", &tokenError{http.StatusBadRequest, "invalid_request", 900144, "The request body is not a valid form."}
	}
	form := r.PostForm // Entra ID reads parameters from the body, not the query string.
	grant := form.Get("grant_type")
	if grant == "" {
		return "", "", missingParam("grant_type")
	}
	if grant != "client_credentials" {
		return "", "", &tokenError{http.StatusBadRequest, "unsupported_grant_type", 70003,
			fmt.Sprintf("The app requested an unsupported grant type '%s'.", grant)}
	}

	clientID, secret := form.Get("client_id"), form.Get("client_secret")
	if user, pass, ok := r.BasicAuth(); ok { // client_secret_basic, RFC 6749 section 2.3.1.
		u, err1 := url.QueryUnescape(user)
		p, err2 := url.QueryUnescape(pass)
		if err1 != nil || err2 != nil || (clientID != "" && clientID != u) || secret != "" {
			return "", "", &tokenError{http.StatusBadRequest, "invalid_request", 90014,
				"The client must use only one authentication method: the Authorization header or the request body."}
		}
		clientID, secret = u, p
	}
	if clientID == "" {
		return "", "", missingParam("client_id")
	}
	if clientID != s.opts.ClientID {
		return "", "", &tokenError{http.StatusBadRequest, "unauthorized_client", 700016,
			fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, tenant)}
	}

	assertion, assertionType := form.Get("client_assertion"), form.Get("client_assertion_type")
	switch {
	case secret != "" && (assertion != "" || assertionType != ""):
		return "", "", &tokenError{http.StatusBadRequest, "invalid_request", 90014,
			"Only one of 'client_secret' and 'client_assertion' may be sent."}
	case secret != "":
		if s.opts.ClientSecret == "" || subtle.ConstantTimeCompare([]byte(secret), []byte(s.opts.ClientSecret)) != 1 {
			return "", "", &tokenError{http.StatusUnauthorized, "invalid_client", 7000215,
				fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", clientID)}
		}
	case assertion != "" || assertionType != "":
		if assertionType != JWTBearerAssertionType {
			return "", "", &tokenError{http.StatusBadRequest, "invalid_request", 900144,
				"The request body must contain the following parameter: 'client_assertion_type' with the value '" + JWTBearerAssertionType + "'."}
		}
		if assertion == "" {
			return "", "", missingParam("client_assertion")
		}
		if terr := s.checkAssertion(r, assertion, clientID, tenant, v1, now); terr != nil {
			return "", "", terr
		}
	default:
		return "", "", &tokenError{http.StatusUnauthorized, "invalid_client", 7000218,
			"The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}
	}

	var resource, audience string
	if v1 {
		resource = strings.TrimSpace(form.Get("resource"))
		if resource == "" {
			return "", "", missingParam("resource")
		}
		audience = s.resolveResource(resource)
		if audience == "" {
			return "", "", &tokenError{http.StatusBadRequest, "invalid_resource", 500011,
				fmt.Sprintf("The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", resource, tenant)}
		}
	} else {
		scope := strings.TrimSpace(form.Get("scope"))
		if scope == "" {
			return "", "", missingParam("scope")
		}
		fields := strings.Fields(scope)
		if len(fields) != 1 || !strings.HasSuffix(strings.ToLower(fields[0]), "/.default") {
			return "", "", &tokenError{http.StatusBadRequest, "invalid_scope", 1002012,
				fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope)}
		}
		resource = fields[0][:len(fields[0])-len("/.default")]
		audience = s.resolveResource(resource)
		if audience == "" {
			// Entra ID answers AADSTS500011 invalid_resource for a resource it does not know;
			// the project's reference documents invalid_scope AADSTS70011, which we keep.
			return "", "", &tokenError{http.StatusBadRequest, "invalid_scope", 70011,
				fmt.Sprintf("The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope %s is not valid.", scope)}
		}
	}

	at := &accessToken{audience: audience, appID: clientID, tenant: s.opts.TenantID, expires: now.Add(s.opts.TokenLifetime)}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch audience {
	case s.apiAudience:
		at.roles = append([]string(nil), s.roles...)
	case s.graphAudience:
		at.roles = append([]string(nil), s.graphRoles...)
	}
	tok := s.accessJWT(at, now)
	for k, t := range s.tokens {
		if now.After(t.expires.Add(time.Hour)) {
			delete(s.tokens, k)
		}
	}
	s.tokens[tok] = at
	return tok, resource, nil
}

// accessJWT encodes an access token as Entra ID issues them for an app-only
// client: a JWT (v1 claims) that names the audience, the tenant, the
// application and, for the API, its application permissions in roles, which
// clients read to check their permissions (Microsoft's docs say to decode the
// token and verify roles). The simulator still validates tokens by its own
// record of what it issued; the HS256 signature only makes the format real.
func (s *Simulator) accessJWT(at *accessToken, now time.Time) string {
	claims := jwt.MapClaims{
		"aud":   at.audience,
		"iss":   "https://sts.windows.net/" + at.tenant + "/",
		"iat":   now.Unix(),
		"nbf":   now.Unix(),
		"exp":   at.expires.Unix(),
		"appid": at.appID,
		"tid":   at.tenant,
		"oid":   newGUID(),
		"sub":   newGUID(),
		"ver":   "1.0",
		"uti":   randomToken(8),
	}
	if at.roles != nil {
		claims["roles"] = at.roles
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.tokenKey)
	if err != nil {
		panic(fmt.Sprintf("defendertest: signing an access token: %v", err)) // HS256 with a key cannot fail
	}
	return signed
}

func missingParam(name string) *tokenError {
	return &tokenError{http.StatusBadRequest, "invalid_request", 900144,
		fmt.Sprintf("The request body must contain the following parameter: '%s'.", name)}
}

// resolveResource returns the audience of a token requested for resource, or "" when the
// resource is unknown.
func (s *Simulator) resolveResource(resource string) string {
	res := strings.TrimSuffix(resource, "/")
	if strings.EqualFold(res, s.apiAudience) || strings.EqualFold(res, WindowsDefenderATPAppID) {
		return s.apiAudience
	}
	if strings.EqualFold(s.apiAudience, DefaultAPIHost) && strings.EqualFold(res, CommercialAlternateResource) {
		return s.apiAudience
	}
	if strings.EqualFold(res, s.graphAudience) || strings.EqualFold(res, GraphAppID) {
		return s.graphAudience
	}
	for _, o := range otherResources {
		if strings.EqualFold(res, o) {
			return o
		}
	}
	return ""
}

// errBadThumbprint reports a client assertion whose header names no registered key.
var errBadThumbprint = errors.New("the key was not found")

// checkAssertion verifies a client assertion: the federated token, or a JWT signed by the
// configured certificate (reference section 3.1).
func (s *Simulator) checkAssertion(r *http.Request, assertion, clientID, tenant string, v1 bool, now time.Time) *tokenError {
	if s.opts.FederatedToken != "" && subtle.ConstantTimeCompare([]byte(assertion), []byte(s.opts.FederatedToken)) == 1 {
		return nil
	}
	cert := s.opts.Certificate
	if cert == nil {
		if s.opts.FederatedToken != "" {
			return &tokenError{http.StatusUnauthorized, "invalid_client", 700211,
				"No matching federated identity record found for presented assertion issuer."}
		}
		return &tokenError{http.StatusUnauthorized, "invalid_client", 700027,
			"Client assertion contains an invalid signature. [Reason - The key was not found.]"}
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return &tokenError{http.StatusUnauthorized, "invalid_client", 700027,
			"Client assertion contains an invalid signature. [Reason - The key is not an RSA key.]"}
	}
	sha1sum := sha1.Sum(cert.Raw) //nolint:gosec // thumbprint, not a security use.
	sha256sum := sha256.Sum256(cert.Raw)
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{"RS256", "PS256"}),
		jwt.WithTimeFunc(s.now),
		jwt.WithLeeway(AssertionClockSkew),
		jwt.WithExpirationRequired(),
		jwt.WithNotBeforeRequired(),
	)
	claims := jwt.MapClaims{}
	_, err := parser.ParseWithClaims(assertion, claims, func(t *jwt.Token) (any, error) {
		switch t.Method.Alg() {
		case "RS256":
			if !thumbprintMatches(t.Header["x5t"], sha1sum[:]) {
				return nil, errBadThumbprint
			}
		case "PS256":
			if !thumbprintMatches(t.Header["x5t#S256"], sha256sum[:]) {
				return nil, errBadThumbprint
			}
		}
		return pub, nil
	})
	switch {
	case err == nil:
	case errors.Is(err, errBadThumbprint):
		return &tokenError{http.StatusUnauthorized, "invalid_client", 700027,
			"Client assertion contains an invalid signature. [Reason - The key was not found.]"}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return &tokenError{http.StatusUnauthorized, "invalid_client", 700027,
			"Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value.]"}
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet):
		return &tokenError{http.StatusUnauthorized, "invalid_client", 700024,
			"Client assertion is not within its valid time range."}
	default:
		return &tokenError{http.StatusUnauthorized, "invalid_client", 50027,
			"JWT token is invalid or malformed: " + err.Error() + "."}
	}

	// aud must name the token endpoint the assertion is presented to.
	base := requestBase(r)
	wantAud := []string{base + "/" + tenant + "/oauth2/v2.0/token"}
	if v1 {
		wantAud = append(wantAud, base+"/"+tenant+"/oauth2/token")
	}
	auds, _ := claims.GetAudience()
	audOK := false
	for _, a := range auds {
		for _, w := range wantAud {
			if strings.EqualFold(a, w) {
				audOK = true
			}
		}
	}
	if !audOK {
		return &tokenError{http.StatusUnauthorized, "invalid_client", 50027,
			fmt.Sprintf("Client assertion audience claim does not match the token endpoint. Expected '%s'.", wantAud[0])}
	}
	iss, _ := claims.GetIssuer()
	sub, _ := claims.GetSubject()
	if iss != clientID || sub != clientID {
		return &tokenError{http.StatusUnauthorized, "invalid_client", 700021,
			"Client assertion application identifier doesn't match 'client_id' parameter."}
	}
	jti, _ := claims["jti"].(string)
	if jti == "" {
		return &tokenError{http.StatusUnauthorized, "invalid_client", 50027,
			"JWT token is invalid or malformed: the 'jti' claim is missing."}
	}
	exp, _ := claims.GetExpirationTime()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, until := range s.jtis {
		if now.After(until) {
			delete(s.jtis, k)
		}
	}
	key := clientID + "|" + jti
	if _, used := s.jtis[key]; used {
		return &tokenError{http.StatusUnauthorized, "invalid_client", 50027,
			"JWT token is invalid or malformed: the assertion 'jti' has already been used."}
	}
	s.jtis[key] = exp.Add(AssertionClockSkew)
	return nil
}

// thumbprintMatches compares a x5t / x5t#S256 header value (base64url, padded or not) with
// the expected digest.
func thumbprintMatches(v any, want []byte) bool {
	str, ok := v.(string)
	if !ok || str == "" {
		return false
	}
	got, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(str, "="))
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(got, want) == 1
}

// requestBase returns scheme://host of the request as the client addressed it.
func requestBase(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func writeTokenError(w http.ResponseWriter, status int, e tokenError, now time.Time) {
	trace, corr := newGUID(), newGUID()
	ts := now.UTC().Format("2006-01-02 15:04:05Z")
	body := struct {
		Error         string `json:"error"`
		Description   string `json:"error_description"`
		Codes         []int  `json:"error_codes"`
		Timestamp     string `json:"timestamp"`
		TraceID       string `json:"trace_id"`
		CorrelationID string `json:"correlation_id"`
		ErrorURI      string `json:"error_uri"`
	}{
		Error:         e.name,
		Description:   fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s", e.code, e.msg, trace, corr, ts),
		Codes:         []int{e.code},
		Timestamp:     ts,
		TraceID:       trace,
		CorrelationID: corr,
		ErrorURI:      fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", e.code),
	}
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
