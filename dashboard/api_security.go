package dashboard

import (
	"net/http"

	"github.com/tether-iot/tether/devices"
)

// securityState is the body of GET /security.
type securityState struct {
	Enabled   bool               `json:"enabled"`
	Threshold int                `json:"threshold"`
	Window    int                `json:"window"`   // seconds
	Duration  int                `json:"duration"` // seconds
	Bans      []devices.Ban      `json:"bans"`
	Refusals  []devices.Refusal  `json:"refusals"`
	Offenders []devices.Offender `json:"offenders"`
}

// topOffenders is how many offenders GET /security lists.
const topOffenders = 20

// noBans answers the security routes of a server without intrusion
// detection.
var noBans = &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Msg: "this server keeps no bans"}

// getSecurity: GET /security → recent refusals, bans in force, top
// offenders (admins).
func (a *API) getSecurity(w http.ResponseWriter, r *http.Request) error {
	if a.bans == nil {
		return noBans
	}
	o := a.bans.Options()
	return writeJSON(w, http.StatusOK, securityState{
		Enabled: a.bans.Enabled(), Threshold: max(o.Threshold, 0),
		Window: int(o.Window.Seconds()), Duration: int(o.Duration.Seconds()),
		Bans: a.bans.Active(), Refusals: a.bans.Recent(), Offenders: a.bans.Offenders(topOffenders),
	})
}

// liftBan: DELETE /security/bans/{key} → 204, recorded in the audit log.
func (a *API) liftBan(w http.ResponseWriter, r *http.Request) error {
	if a.bans == nil {
		return noBans
	}
	key := r.PathValue("key")
	ban, ok := a.bans.Lift(key)
	if !ok {
		return notFound("ban")
	}
	a.log.Info("api: ban lifted", "ban", ban.Key, "by", identity(r).Name)
	a.record(r, devices.AuditEntry{Action: devices.AuditBanLifted, Target: ban.Key,
		Detail: "banned since " + ban.Since.UTC().Format("2006-01-02T15:04:05Z")})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// bannedLogin refuses a login as name from addr that a ban covers: 403,
// before the password is looked at.
func (a *API) bannedLogin(r *http.Request, name, addr string) error {
	ban, ok := a.bans.Banned(name, addr)
	if !ok {
		return nil
	}
	a.metrics.logins.WithLabelValues("banned").Inc()
	a.recordRefusal(r, name, "banned")
	secs := int(ban.Until.Sub(a.now()).Seconds() + 0.999)
	return &apiError{Status: http.StatusForbidden, Code: codeBanned,
		Msg: "too many refusals from this address: banned for now", RetryAfter: max(secs, 1)}
}
