package devices

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// User is a person who uses the dashboard, the API or MQTT.
type User struct {
	Username  string    `json:"username"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`

	// checked is the password hash AuthenticateUser compared the password
	// with (or CreateUser made): IssueSession binds the session to it, and
	// refuses one whose user has had their password or role changed since
	// (a login racing the change must not outlive it).
	checked string
}

// Bounds on passwords (bcrypt reads at most 72 bytes).
const (
	MinPassword = 8
	MaxPassword = 72
)

// CheckPassword returns an *InvalidError when password cannot be a user's
// password: its length is out of bounds, or it is shaped like an API token
// ("tth_…") or a session JWT, which MQTT and the API read as such, so that
// it could never log in. Creating a user and changing a password both
// check it.
func CheckPassword(password string) error {
	if len(password) < MinPassword || len(password) > MaxPassword {
		return invalid("password", "must be %d to %d bytes", MinPassword, MaxPassword)
	}
	switch tokenShape(password) {
	case shapeToken:
		return invalid("password", "must not start with %q: that is how API tokens start, and it would be read as one", TokenPrefix)
	case shapeSession:
		return invalid("password", "must not be shaped like a JSON Web Token (three dot-separated parts starting with \"eyJ\"): it would be read as a session token")
	}
	return nil
}

// AdminUser is the name of the user the first start creates.
const AdminUser = "admin"

// dummyHash is compared against when the user does not exist, so that
// timing does not tell which names exist.
func (r *Registry) dummyHash() []byte {
	r.dummyOnce.Do(func() {
		r.writeMu.Lock()
		cost := r.hashCost
		r.writeMu.Unlock()
		r.dummy, _ = bcrypt.GenerateFromPassword([]byte("tether-no-such-user"), cost)
	})
	return r.dummy
}

// CreateUser adds a user with a password (stored as a bcrypt hash) and
// role RoleViewer, RoleOperator or RoleAdmin. A name taken by a user or a
// device is ErrConflict; bad input is an *InvalidError. User names follow
// the device id rule.
func (r *Registry) CreateUser(ctx context.Context, username, password, role string) (User, error) {
	u, err := r.createUser(ctx, username, password, role)
	if err != nil {
		return User{}, fmt.Errorf("create user: %w", err)
	}
	r.log.Info("user created", "user", u.Username, "role", u.Role)
	return u, nil
}

func (r *Registry) createUser(ctx context.Context, username, password, role string) (User, error) {
	if err := checkID("username", username); err != nil {
		return User{}, err
	}
	if err := CheckPassword(password); err != nil {
		return User{}, err
	}
	if err := checkRole(role); err != nil {
		return User{}, err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), r.hashCost)
	if err != nil {
		return User{}, err
	}
	r.refreshName(ctx, username) // PostgreSQL: another node's names
	r.mu.RLock()
	taken := r.nameTaken(username)
	r.mu.RUnlock()
	if taken {
		return User{}, fmt.Errorf("%w: %q is taken by a device or a user", ErrConflict, username)
	}
	u := User{Username: username, Role: role, CreatedAt: time.Now().UTC(), checked: string(hash)}
	if _, err := r.db.W.ExecContext(ctx, `INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)`,
		username, string(hash), role, fmtTime(u.CreatedAt)); err != nil {
		if isConstraint(err) {
			return User{}, fmt.Errorf("%w: %q is taken", ErrConflict, username)
		}
		return User{}, err
	}
	r.mu.Lock()
	r.users[username] = userCred{hash: hash, role: role}
	r.mu.Unlock()
	return u, nil
}

// User returns one user, or ErrNotFound.
func (r *Registry) User(ctx context.Context, username string) (User, error) {
	var u User
	var created string
	err := r.db.R.QueryRowContext(ctx, `SELECT username, role, created_at FROM users WHERE username = ?`, username).
		Scan(&u.Username, &u.Role, &created)
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return User{}, fmt.Errorf("user %q: %w", username, err)
	}
	u.CreatedAt, _ = parseTime(created)
	return u, nil
}

// ListUsers returns one page of users ordered by name (limit 0 means 100,
// at most MaxPage) and the next cursor ("" on the last page).
func (r *Registry) ListUsers(ctx context.Context, limit int, cursor string) ([]User, string, error) {
	limit, after, err := page(limit, cursor)
	if err != nil {
		return nil, "", fmt.Errorf("list users: %w", err)
	}
	rows, err := r.db.R.QueryContext(ctx, `SELECT username, role, created_at FROM users WHERE username > ? ORDER BY username LIMIT ?`, after, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	users := []User{}
	for rows.Next() {
		var u User
		var created string
		if err := rows.Scan(&u.Username, &u.Role, &created); err != nil {
			return nil, "", fmt.Errorf("list users: %w", err)
		}
		u.CreatedAt, _ = parseTime(created)
		users = append(users, u)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list users: %w", err)
	}
	next := ""
	if len(users) > limit {
		users = users[:limit]
		next = encodeCursor(users[limit-1].Username)
	}
	return users, next, nil
}

// DeleteUser removes a user, its tokens and sessions; its connections are
// closed (OnRevoke). Deleting the last admin is ErrLastAdmin.
func (r *Registry) DeleteUser(ctx context.Context, username string) error {
	if err := r.deleteUser(ctx, username); err != nil {
		return fmt.Errorf("delete user %q: %w", username, err)
	}
	r.log.Info("user deleted", "user", username)
	r.revoke(Revocation{Name: username, Purge: true})
	return nil
}

func (r *Registry) deleteUser(ctx context.Context, username string) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.RLock()
	u, ok := r.users[username]
	admins := 0
	for _, c := range r.users {
		if c.role == RoleAdmin {
			admins++
		}
	}
	r.mu.RUnlock()
	if !ok {
		return ErrNotFound
	}
	if u.role == RoleAdmin && admins == 1 {
		return ErrLastAdmin
	}
	if err := r.keepAnAdmin(ctx, `DELETE FROM users WHERE username = ?`, username); err != nil {
		return err
	}
	r.mu.Lock()
	delete(r.users, username)
	for d, t := range r.tokens {
		if t.username == username {
			delete(r.tokens, d)
		}
	}
	r.mu.Unlock()
	return nil
}

// UserUpdate is a change to a user: each non-nil field is set.
type UserUpdate struct {
	Password *string
	Role     *string
}

// UpdateUser changes a user's password and/or role and returns the user
// as it is now. Demoting the last admin is ErrLastAdmin. A new password
// ends every session the user had (VerifySession refuses them) and, like
// a new role, closes the user's MQTT connections (OnRevoke), which come
// back with the new role or credentials; API tokens stay valid (revoke
// them with RevokeToken).
func (r *Registry) UpdateUser(ctx context.Context, username string, p UserUpdate) (User, error) {
	changed, err := r.updateUser(ctx, username, p)
	if err != nil {
		return User{}, fmt.Errorf("update user %q: %w", username, err)
	}
	if changed {
		r.log.Info("user updated", "user", username, "password_changed", p.Password != nil, "role", p.Role != nil)
		r.revoke(Revocation{Name: username}) // connections only: their sessions stay theirs
	}
	return r.User(ctx, username)
}

func (r *Registry) updateUser(ctx context.Context, username string, p UserUpdate) (changed bool, err error) {
	if p.Password != nil {
		if err := CheckPassword(*p.Password); err != nil {
			return false, err
		}
	}
	if p.Role != nil {
		if err := checkRole(*p.Role); err != nil {
			return false, err
		}
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.RLock()
	c, ok := r.users[username]
	admins := 0
	for _, u := range r.users {
		if u.role == RoleAdmin {
			admins++
		}
	}
	r.mu.RUnlock()
	if !ok {
		return false, ErrNotFound
	}
	if p.Role != nil && c.role == RoleAdmin && *p.Role != RoleAdmin && admins == 1 {
		return false, ErrLastAdmin
	}
	if p.Password != nil {
		hash, err := bcrypt.GenerateFromPassword([]byte(*p.Password), r.hashCost)
		if err != nil {
			return false, err
		}
		c.hash, changed = hash, true
	}
	if p.Role != nil && *p.Role != c.role {
		c.role, changed = *p.Role, true
	}
	if !changed {
		return false, nil
	}
	if err := r.keepAnAdmin(ctx, `UPDATE users SET password_hash = ?, role = ? WHERE username = ?`,
		string(c.hash), c.role, username); err != nil {
		return false, err
	}
	r.mu.Lock()
	r.users[username] = c
	r.mu.Unlock()
	return true, nil
}

// keepAnAdmin runs the statement query (a user's change or deletion) in a
// transaction that is rolled back, as ErrLastAdmin, if it leaves no user
// with the admin role. The callers' check against the cache answers
// first; this one holds across nodes (PostgreSQL), whose caches may not
// have seen each other's latest changes: the admins' rows are locked
// before the change (FOR UPDATE), so two demotions at once on two nodes
// are decided one after the other, and the second finds the first's.
// On SQLite writes are serialised already.
func (r *Registry) keepAnAdmin(ctx context.Context, query string, args ...any) error {
	tx, err := r.db.W.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	lock := `SELECT username FROM users WHERE role = ?`
	if r.shared() {
		lock += ` FOR UPDATE`
	}
	before, err := countRows(ctx, tx, lock, RoleAdmin)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, query, args...); err != nil {
		return err
	}
	after, err := countRows(ctx, tx, `SELECT username FROM users WHERE role = ?`, RoleAdmin)
	if err != nil {
		return err
	}
	if before > 0 && after == 0 {
		return ErrLastAdmin
	}
	return tx.Commit()
}

// countRows counts the rows query returns.
func countRows(ctx context.Context, tx *sql.Tx, query string, args ...any) (int, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	n := 0
	for rows.Next() {
		n++
	}
	return n, errors.Join(rows.Err(), rows.Close())
}

// AuthenticateUser checks a user's password; any failure is
// ErrUnauthorized. The User it returns remembers the password hash it
// checked, for IssueSession: a session issued from it belongs to that
// password, whatever happens to the user between the two calls.
func (r *Registry) AuthenticateUser(ctx context.Context, username, password string) (User, error) {
	r.refreshName(ctx, username) // PostgreSQL: another node's changes
	r.mu.RLock()
	c, ok := r.users[username]
	r.mu.RUnlock()
	if !ok {
		_ = r.checkPassword(ctx, r.dummyHash(), password)
		return User{}, fmt.Errorf("authenticate user: %w", ErrUnauthorized)
	}
	if len(password) > MaxPassword || !r.checkPassword(ctx, c.hash, password) {
		return User{}, fmt.Errorf("authenticate user: %w", ErrUnauthorized)
	}
	return User{Username: username, Role: c.role, checked: string(c.hash)}, nil
}

// EnsureAdmin creates user "admin" with role admin when there are no users
// at all (the first start). Its password is envPassword when that is not
// empty (TETHER_ADMIN_PASSWORD), else a random one which is returned so
// the caller can print it once. generated is "" when nothing was
// generated; created says whether this call made the user, so a caller
// given envPassword can tell that it was not used (there were users
// already, or another node on a shared database made admin first).
func (r *Registry) EnsureAdmin(ctx context.Context, envPassword string) (generated string, created bool, err error) {
	r.mu.RLock()
	n := len(r.users)
	r.mu.RUnlock()
	if n > 0 {
		return "", false, nil
	}
	password := envPassword
	if password == "" {
		generated = newSecret()[:24]
		password = generated
	}
	if _, err := r.createUser(ctx, AdminUser, password, RoleAdmin); err != nil {
		if r.shared() && errors.Is(err, ErrConflict) {
			// Another node, starting at the same time, made it.
			r.refreshName(ctx, AdminUser)
			return "", false, nil
		}
		return "", false, fmt.Errorf("ensure admin (TETHER_ADMIN_PASSWORD): %w", err)
	}
	r.log.Info("first start: created user", "user", AdminUser, "role", RoleAdmin, "password_from_env", envPassword != "")
	return generated, true, nil
}

// SetPasswordCost sets the bcrypt cost of password hashes made from now
// on (default bcrypt.DefaultCost, 10). Tests lower it to bcrypt.MinCost:
// the race detector makes bcrypt very slow.
func (r *Registry) SetPasswordCost(cost int) {
	r.writeMu.Lock()
	r.hashCost = min(max(cost, bcrypt.MinCost), bcrypt.MaxCost)
	r.writeMu.Unlock()
}

// checkPassword compares with a bcrypt hash. At most GOMAXPROCS compare at
// once, so a flood of guesses at people's passwords queues up instead of
// taking every core from the broker (devices' secrets never come here).
func (r *Registry) checkPassword(ctx context.Context, hash []byte, password string) bool {
	select {
	case r.hashSem <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	defer func() { <-r.hashSem }()
	return bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil
}
