package dashboard

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/broker/info"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/listeners/forwarded"
)

// APIPrefix is where the JSON API is mounted; every route path in the
// route table is relative to it.
const APIPrefix = "/api/v1"

// APIOptions are what the JSON API serves. Registry is required.
type APIOptions struct {
	// Registry holds devices, users, tokens and sessions.
	Registry *devices.Registry
	// Broker is the running MQTT broker, for /clients and /broker; nil
	// answers those routes with 503.
	Broker Broker
	// Sessions is the MQTT session store, for GET /sessions; nil answers
	// it with 503.
	Sessions Sessions
	// SessionDeleter ends sessions, for DELETE /sessions/{clientId}; nil
	// answers it with 503.
	SessionDeleter SessionDeleter
	// Telemetry, Commands and Twins serve the device data routes; nil
	// answers them with 503.
	Telemetry *devices.Telemetry
	Commands  Commands
	Twins     Twins
	// Logins is the login throttle shared with the MQTT broker (SPEC §5:
	// one limiter); nil means one of the API's own.
	Logins *devices.LoginLimiter
	// Audit receives who did what (GET /audit); nil keeps no audit log
	// and answers GET /audit with 503.
	Audit *devices.Audit
	// Bans is intrusion detection (GET /security, DELETE
	// /security/bans/{key}; a banned login gets 403); nil bans nobody
	// and answers those routes with 503.
	Bans *devices.Bans
	// TrustedProxies are the addresses (IPs or CIDRs, as in
	// http.trusted_proxies) whose X-Forwarded-For is believed when
	// slowing down failed logins by address.
	TrustedProxies []string
	// Logger receives request errors; nil means slog.Default().
	Logger *slog.Logger
	// Metrics, when set, receives the API's counters.
	Metrics prometheus.Registerer
	// TokenTTL is the lifetime of a login session; 0 means 12 hours.
	TokenTTL time.Duration
	// Nodes lists the cluster's nodes for GET /broker; nil when the node
	// is alone (the list is left out).
	Nodes func() []info.Node
	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

// API is the JSON API under /api/v1. Build it with NewAPI.
type API struct {
	reg    *devices.Registry
	broker Broker
	store  Sessions
	purge  SessionDeleter
	log    *slog.Logger
	ttl    time.Duration
	now    func() time.Time

	telemetry *devices.Telemetry
	commands  Commands
	twins     Twins
	audit     *devices.Audit
	bans      *devices.Bans
	nodes     func() []info.Node

	proxies *forwarded.Proxies
	logins  *devices.LoginLimiter
	metrics *apiMetrics
	mux     *http.ServeMux
	table   []route
}

// NewAPI returns the JSON API handler, to be mounted at /api/v1/ (see
// Options.API). It fails when a required option is missing or its metrics
// cannot be registered.
func NewAPI(o APIOptions) (*API, error) {
	if o.Registry == nil {
		return nil, errors.New("api: a registry is required")
	}
	a := &API{
		reg:    o.Registry,
		broker: o.Broker,
		store:  o.Sessions,
		purge:  o.SessionDeleter,
		log:    o.Logger,
		ttl:    o.TokenTTL,
		now:    o.Now,

		telemetry: o.Telemetry,
		commands:  o.Commands,
		twins:     o.Twins,
		audit:     o.Audit,
		bans:      o.Bans,
		nodes:     o.Nodes,
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.log = a.log.With("component", "api")
	if a.ttl <= 0 {
		a.ttl = 12 * time.Hour
	}
	if a.now == nil {
		a.now = time.Now
	}
	proxies, err := forwarded.ParseProxies(o.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	a.proxies = proxies
	a.metrics = newAPIMetrics()
	if o.Metrics != nil {
		if err := o.Metrics.Register(a.metrics); err != nil {
			return nil, errors.Join(errors.New("api: register metrics"), err)
		}
	}
	a.logins = o.Logins
	if a.logins == nil {
		a.logins = devices.NewLoginLimiter(&devices.LoginLimitOptions{Now: a.now})
	}
	a.table = a.routes()
	a.mux = http.NewServeMux()
	for _, rt := range a.table {
		a.mux.Handle(rt.Method+" "+APIPrefix+rt.Path, a.wrap(rt))
	}
	a.mux.HandleFunc(APIPrefix+"/", a.notFound)
	return a, nil
}

// ServeHTTP implements http.Handler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Access levels of a route: who may call it.
const (
	// public routes need no credentials.
	public = ""
	// viewer, operator and admin routes need a user with at least that
	// role (devices.Identity.Can).
	viewer   = devices.RoleViewer
	operator = devices.RoleOperator
	admin    = devices.RoleAdmin
)

// route is one entry of the route table.
type route struct {
	// Method and Path (relative to APIPrefix, with {name} wildcards as in
	// net/http patterns) select the route; openapi.json has one operation
	// for each pair.
	Method, Path string
	// Role is the least role allowed (public, viewer, operator, admin).
	Role string
	// Handle serves the request; an error it returns becomes the error
	// body (see apiError).
	Handle handlerFunc
}

// handlerFunc serves one API request. It writes the response itself on
// success and returns an error otherwise: an *apiError picks the status
// and the message the client sees; any other error is logged and answered
// with a bare 500.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// routes is the API's route table: the one place that says which routes
// exist and who may call them. Add a route with one line pointing at a
// handler in its own file (api_telemetry.go, api_commands.go, ...), and
// describe it in openapi.json: TestOpenAPIMatchesRoutes fails until both
// agree.
func (a *API) routes() []route {
	return []route{
		{"POST", "/auth/login", public, a.login},
		{"POST", "/auth/logout", viewer, a.logout},

		{"GET", "/devices", viewer, a.listDevices},
		{"POST", "/devices", admin, a.createDevice},
		{"POST", "/devices/bulk", admin, a.createDevices},
		{"GET", "/devices/{id}", viewer, a.getDevice},
		{"PATCH", "/devices/{id}", admin, a.updateDevice},
		{"DELETE", "/devices/{id}", admin, a.deleteDevice},
		{"POST", "/devices/{id}/secret", admin, a.rotateSecret},
		{"GET", "/devices/{id}/telemetry", viewer, a.getTelemetry},
		{"GET", "/devices/{id}/commands", viewer, a.listCommands},
		{"POST", "/devices/{id}/commands", operator, a.sendCommand},
		{"GET", "/commands/{cmdId}", viewer, a.getCommand},
		{"GET", "/devices/{id}/twin", viewer, a.getTwin},
		{"PATCH", "/devices/{id}/twin", operator, a.patchTwin},
		{"GET", "/devices/{id}/export", admin, a.exportDevice},

		{"GET", "/clients", viewer, a.listClients},
		{"GET", "/sessions", viewer, a.listSessions},
		{"DELETE", "/sessions/{clientId}", admin, a.deleteSession},
		{"GET", "/broker", viewer, a.brokerStats},

		{"GET", "/auth/me", viewer, a.me},
		{"GET", "/users", admin, a.listUsers},
		{"POST", "/users", admin, a.createUser},
		{"GET", "/users/{name}", viewer, a.getUser},      // self or admin
		{"PATCH", "/users/{name}", viewer, a.updateUser}, // own password, or admin
		{"DELETE", "/users/{name}", admin, a.deleteUser},
		{"GET", "/tokens", viewer, a.listTokens},          // own, or all for admin
		{"POST", "/tokens", viewer, a.createToken},        // own, or anyone's for admin
		{"DELETE", "/tokens/{id}", viewer, a.revokeToken}, // own, or any for admin
		{"GET", "/audit", admin, a.listAudit},
		{"GET", "/security", admin, a.getSecurity},
		{"DELETE", "/security/bans/{key}", admin, a.liftBan},

		{"GET", "/openapi.json", public, a.openAPI},
	}
}
