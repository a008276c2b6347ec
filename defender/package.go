package defender

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
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
	if _, err := checkDownloadURL(uri); err != nil {
		return "", &Error{Op: opGetPackageURI, Outcome: OutcomePermanent, StatusCode: http.StatusOK, Message: err.Error()}
	}
	return uri, nil
}

// checkDownloadURL validates a package link without ever quoting it.
func checkDownloadURL(uri string) (*url.URL, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Host == "" || u.User != nil {
		return nil, errors.New("package link is not an absolute URL")
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && loopback(u.Hostname()):
	default:
		return nil, errors.New("package link is not an https URL")
	}
	return u, nil
}

// DownloadPackage downloads a package from the link GetPackageURI returned
// into destPath. It streams to destPath+".part" while hashing, syncs it and
// renames it into place, so destPath only ever holds a whole package. The
// parent directory is created if needed. It returns the size and the hex
// SHA-256 of the file. An expired or refused link (401, 403, 404, 410) is
// OutcomeRetryable: fetch a new link, then retry. The link never appears in
// an error or a log line.
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
	rctx, cancel := context.WithTimeout(ctx, c.cfg.DownloadTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, "", &Error{Op: op, Outcome: OutcomePermanent, Message: "cannot build request", Err: redactURL(err)}
	}
	// No Authorization header: the link carries its own token, and the MDE
	// token must not reach the storage host.
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	req.Header.Set("Accept", "application/zip, application/octet-stream, */*")
	begin := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.observe(op, "error", begin)
		return 0, "", transportError(op, err)
	}
	defer func() { _ = resp.Body.Close() }()
	code := strconv.Itoa(resp.StatusCode)
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		c.observe(op, code, begin)
		return 0, "", classify(op, kindDownload, resp.StatusCode, resp.Header, nil, c.clock.Now())
	}
	size, sum, err := writeFile(destPath, resp.Body)
	c.observe(op, code, begin)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.StatusCode = resp.StatusCode
		}
		return 0, "", err
	}
	c.logger.Debug("defender package downloaded", zap.String("operation", op),
		zap.String("path", destPath), zap.Int64("size", size))
	return size, sum, nil
}

// writeFile streams body to path+".part", hashing it, then fsyncs and renames
// it to path and fsyncs the directory.
func writeFile(path string, body io.Reader) (int64, string, error) {
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
	n, err := io.Copy(io.MultiWriter(f, h), &readSide{body})
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
