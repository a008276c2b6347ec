package defender

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/internal/loopback"
)

// GetPackageURI returns the short-lived download link of a collected
// investigation package (GET /api/machineactions/{id}/getPackageUri),
// with the embedded '"' characters MDE may put around it removed. Until the
// collection has succeeded MDE answers 404: that is OutcomeRetryable. The
// quota is 2/min and 120/h. Download the package at once; the link is a
// credential: never log or store it.
func (c *Client) GetPackageURI(ctx context.Context, actionID string) (string, error) {
	if !validActionID(actionID) {
		return "", invalid(opGetPackageURI, "action id is not a GUID", ErrInvalidID)
	}
	var v struct {
		Value string `json:"value"`
	}
	r := request{op: opGetPackageURI, kind: kindPackageURI, group: GroupPackageURI, method: http.MethodGet,
		url: c.endpoint("api", "machineactions", actionID, "getPackageUri"), actionID: actionID}
	if err := c.getJSON(ctx, r, &v); err != nil {
		return "", err
	}
	uri := strings.TrimSpace(strings.Trim(strings.TrimSpace(v.Value), `"`))
	if uri == "" {
		return "", &Error{Op: opGetPackageURI, Outcome: OutcomeRetryable, StatusCode: http.StatusOK, Message: "no package link in the answer"}
	}
	u, err := checkDownloadURL(uri)
	if err != nil {
		return "", &Error{Op: opGetPackageURI, Outcome: OutcomePermanent, StatusCode: http.StatusOK, Message: err.Error()}
	}
	if err := c.checkPackageHost(u); err != nil {
		c.logRefusedLink(&r, u.Hostname(), err.Error())
		return "", &Error{Op: opGetPackageURI, Outcome: OutcomePermanent, StatusCode: http.StatusOK, Message: err.Error(), Err: ErrPackageHostRefused}
	}
	return uri, nil
}

// ErrPackageHostRefused is wrapped by the error of a package link, or a
// redirect of it, that leads to a host outside Config.PackageHosts (or to
// plain http): nothing was sent to it.
var ErrPackageHostRefused = errors.New("package host not allowed")

// maxPackageRedirects bounds the redirects one package download follows.
const maxPackageRedirects = 3

// checkDownloadURL validates a package link without ever quoting it.
func checkDownloadURL(uri string) (*url.URL, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Host == "" || u.User != nil {
		return nil, errors.New("package link is not an absolute URL")
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && loopback.Host(u.Hostname()):
	default:
		return nil, errors.New("package link is not an https URL")
	}
	return u, nil
}

// checkPackageHost accepts the API host (the simulator and proxies serve
// packages from it) and the hosts of Config.PackageHosts. The error names
// the host only: the rest of the link is a credential.
func (c *Client) checkPackageHost(u *url.URL) error {
	if sameHostPort(u, c.cfg.apiBase) || hostAllowed(u.Hostname(), c.cfg.packageHosts) {
		return nil
	}
	return fmt.Errorf("package link host %q is not allowed (defender.package_hosts)", clean(u.Hostname()))
}

// sameHostPort reports whether a and b name the same host and port, the
// scheme's default port filled in.
func sameHostPort(a, b *url.URL) bool {
	if a == nil || b == nil || !strings.EqualFold(strings.TrimSuffix(a.Hostname(), "."), strings.TrimSuffix(b.Hostname(), ".")) {
		return false
	}
	return effectivePort(a) == effectivePort(b)
}

func effectivePort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "http" {
		return "80"
	}
	return "443"
}

// redirectRefused is returned by checkDownloadRedirect; it names the host
// only.
type redirectRefused struct {
	host   string
	reason string
}

func (e *redirectRefused) Error() string { return e.reason }

// checkDownloadRedirect is the download client's CheckRedirect: every hop
// must pass the checks of the first link, within maxPackageRedirects, and
// never carries an Authorization header.
func (c *Client) checkDownloadRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > maxPackageRedirects {
		return &redirectRefused{host: req.URL.Hostname(), reason: fmt.Sprintf("package link redirected more than %d times", maxPackageRedirects)}
	}
	if _, err := checkDownloadURL(req.URL.String()); err != nil {
		return &redirectRefused{host: req.URL.Hostname(), reason: "package link redirected to a link that is not https"}
	}
	if err := c.checkPackageHost(req.URL); err != nil {
		return &redirectRefused{host: req.URL.Hostname(), reason: "redirected: " + err.Error()}
	}
	req.Header.Del("Authorization")
	return nil
}

// logRefusedLink logs a refused package link or redirect loudly (an
// attack, or a storage host missing from defender.package_hosts), naming
// its host only: the link is a credential.
func (c *Client) logRefusedLink(r *request, host, reason string) {
	c.logger.Error("defender package link refused",
		r.fields(zap.String("host", clean(host)), zap.String("reason", reason))...)
}

// errStalled is the cause of a download cancelled for lack of progress.
var errStalled = errors.New("download aborted")

// DownloadPackage downloads a package from the link GetPackageURI returned
// into destPath. It streams to destPath+".part" while hashing, syncs it and
// renames it into place, so destPath only ever holds a whole package. The
// parent directory is created if needed. It returns the size and the hex
// SHA-256 of the file. An expired or refused link (401, 403, 404, 410) is
// OutcomeRetryable: fetch a new link, then retry. The link and each
// redirect must be https (http only to a loopback host) and lead to the API
// host or a host of Config.PackageHosts, within 3 redirects; a package
// larger than Config.MaxPackageBytes is refused (permanent), and a download
// that receives nothing for Config.DownloadStallTimeout is aborted
// (retryable). The link never appears in an error or a log line.
func (c *Client) DownloadPackage(ctx context.Context, uri, destPath string) (size int64, sha256hex string, err error) {
	const op = opDownloadPackage
	u, err := checkDownloadURL(uri)
	if err != nil {
		return 0, "", invalid(op, err.Error(), ErrInvalidArgument)
	}
	if destPath == "" {
		return 0, "", invalid(op, "destination path is required", ErrInvalidArgument)
	}
	r := request{op: op, kind: kindDownload}
	defer func() {
		if err != nil {
			c.logFailure(&r, err)
		}
	}()
	if err := c.checkPackageHost(u); err != nil {
		c.logRefusedLink(&r, u.Hostname(), err.Error())
		return 0, "", &Error{Op: op, Outcome: OutcomePermanent, Message: err.Error(), Err: ErrPackageHostRefused}
	}
	rctx, cancel := context.WithTimeout(ctx, c.cfg.DownloadTimeout)
	defer cancel()
	// The no-progress timer cancels the request; every byte received
	// re-arms it.
	sctx, stall := context.WithCancelCause(rctx)
	defer stall(nil)
	timer := time.AfterFunc(c.cfg.DownloadStallTimeout, func() { stall(errStalled) })
	defer timer.Stop()
	stalled := func(e *Error) *Error {
		if errors.Is(context.Cause(sctx), errStalled) {
			e.Outcome = OutcomeRetryable
			e.Message = fmt.Sprintf("no data received for %s", c.cfg.DownloadStallTimeout)
			e.Err = errStalled
		}
		return e
	}
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, "", &Error{Op: op, Outcome: OutcomePermanent, Message: "cannot build request", Err: redactURL(err)}
	}
	// No Authorization header: the link carries its own token, and the MDE
	// token must not reach the storage host.
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	req.Header.Set("Accept", "application/zip, application/octet-stream, */*")
	begin := time.Now()
	resp, err := c.download.Do(req)
	if err != nil {
		c.observe(op, "error", begin)
		var rr *redirectRefused
		if errors.As(err, &rr) {
			c.logRefusedLink(&r, rr.host, rr.reason)
			return 0, "", &Error{Op: op, Outcome: OutcomePermanent, Message: rr.reason, Err: ErrPackageHostRefused}
		}
		return 0, "", stalled(transportError(op, err))
	}
	defer func() { _ = resp.Body.Close() }()
	code := strconv.Itoa(resp.StatusCode)
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		c.observe(op, code, begin)
		return 0, "", classify(op, kindDownload, resp.StatusCode, resp.Header, nil, c.clock.Now())
	}
	limit := c.cfg.MaxPackageBytes
	if resp.ContentLength > limit {
		// Refused before reading: the body is closed unread.
		c.observe(op, code, begin)
		return 0, "", tooLarge(limit, resp.StatusCode)
	}
	body := &progressReader{r: resp.Body, timer: timer, d: c.cfg.DownloadStallTimeout}
	size, sum, err := writeFile(sctx, destPath, body, limit)
	c.observe(op, code, begin)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.StatusCode = resp.StatusCode
			if e.Outcome == OutcomeRetryable && e.Message == "" {
				stalled(e)
			}
		}
		return 0, "", err
	}
	c.logger.Debug("defender package downloaded", zap.String("operation", op),
		zap.String("path", destPath), zap.Int64("size", size))
	return size, sum, nil
}

// tooLarge is the error of a package over the cap; it names the cap, never
// the link.
func tooLarge(limit int64, status int) *Error {
	return &Error{Op: opDownloadPackage, Outcome: OutcomePermanent, StatusCode: status,
		Message: fmt.Sprintf("package larger than defender.max_package_bytes (%d bytes)", limit)}
}

// progressReader re-arms the no-progress timer whenever bytes arrive.
type progressReader struct {
	r     io.Reader
	timer *time.Timer
	d     time.Duration
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.timer.Reset(p.d)
	}
	return n, err
}

// writeFile streams body to path+".part", hashing it, then fsyncs and renames
// it to path and fsyncs the directory. A body longer than limit is cut
// there, and the part file removed. A body that ends after ctx was
// cancelled is not kept: the end may be the server answering the
// cancellation, not the whole package.
func writeFile(ctx context.Context, path string, body io.Reader, limit int64) (int64, string, error) {
	const op = opDownloadPackage
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, "", fileError(err)
	}
	part := path + ".part"
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, "", fileError(err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(part)
		}
	}()
	h := sha256.New()
	// One byte past the cap tells a package over it from one of its size.
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(&readSide{body}, min(limit, math.MaxInt64-1)+1))
	if err == nil && n > limit {
		return 0, "", tooLarge(limit, 0)
	}
	if cause := context.Cause(ctx); err == nil && cause != nil {
		err = readError{cause}
	}
	if err != nil {
		var rs readError
		if errors.As(err, &rs) {
			return 0, "", transportError(op, rs.err)
		}
		return 0, "", fileError(err)
	}
	if err := f.Sync(); err != nil {
		return 0, "", fileError(err)
	}
	if err := f.Close(); err != nil {
		return 0, "", fileError(err)
	}
	ok = true
	if err := os.Rename(part, path); err != nil {
		_ = os.Remove(part)
		return 0, "", fileError(err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename durable; not every file system supports it
		_ = d.Close()
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// readSide marks errors of the network side of a copy.
type readSide struct{ r io.Reader }

type readError struct{ err error }

func (e readError) Error() string { return e.err.Error() }
func (e readError) Unwrap() error { return e.err }

func (r *readSide) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, readError{redactURL(err)}
	}
	return n, err
}

// fileError classifies a local file failure: a permission problem is
// permanent, anything else (disk full, ...) may pass.
func fileError(err error) *Error {
	e := &Error{Op: opDownloadPackage, Outcome: OutcomeRetryable, Message: "cannot write the package", Err: err}
	if errors.Is(err, os.ErrPermission) {
		e.Outcome = OutcomePermanent
	}
	return e
}
