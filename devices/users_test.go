package devices

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestUsersAndAdmin(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	gen, created, err := r.EnsureAdmin(ctx, "")
	if err != nil || len(gen) < 16 || !created {
		t.Fatalf("first admin: %q %v %v", gen, created, err)
	}
	if again, created, err := r.EnsureAdmin(ctx, ""); err != nil || again != "" || created {
		t.Fatalf("second EnsureAdmin: %q %v %v", again, created, err)
	}
	if u, err := r.AuthenticateUser(ctx, AdminUser, gen); err != nil || u.Role != RoleAdmin {
		t.Fatalf("admin login: %+v %v", u, err)
	}
	if _, err := r.AuthenticateUser(ctx, AdminUser, "wrong-password"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := r.AuthenticateUser(ctx, "ghost", gen); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("unknown user: %v", err)
	}
	var ie *InvalidError
	for _, c := range []struct{ name, pass, role string }{
		{"bob", "short", RoleViewer}, {"bob", "password1", "root"}, {"b/ob", "password1", RoleViewer},
	} {
		if _, err := r.CreateUser(ctx, c.name, c.pass, c.role); !errors.As(err, &ie) {
			t.Errorf("CreateUser(%q, role %q): %v, want *InvalidError", c.name, c.role, err)
		}
	}
	if _, err := r.CreateUser(ctx, AdminUser, "password1", RoleViewer); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate user: %v", err)
	}
	if _, err := r.CreateUser(ctx, "bob", "password1", RoleOperator); err != nil {
		t.Fatal(err)
	}
	users, next, err := r.ListUsers(ctx, 1, "")
	if err != nil || len(users) != 1 || users[0].Username != "admin" || next == "" {
		t.Fatalf("page 1: %+v %q %v", users, next, err)
	}
	users, next, _ = r.ListUsers(ctx, 1, next)
	if len(users) != 1 || users[0].Username != "bob" || next != "" {
		t.Fatalf("page 2: %+v %q", users, next)
	}
	if err := r.DeleteUser(ctx, AdminUser); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("delete last admin: %v", err)
	}
	if err := r.DeleteUser(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authenticate(ctx, "bob", "password1"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("deleted user: %v", err)
	}
}

func TestEnsureAdminFromEnv(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	gen, created, err := r.EnsureAdmin(ctx, "from-the-env")
	if err != nil || gen != "" || !created {
		t.Fatalf("%q %v %v", gen, created, err)
	}
	if id, err := r.Authenticate(ctx, AdminUser, "from-the-env"); err != nil || id.Role != RoleAdmin || id.Via != "password" {
		t.Fatalf("%+v %v", id, err)
	}
	// Users exist: a second password is not used, and the caller is told.
	if gen, created, err := r.EnsureAdmin(ctx, "another-password"); err != nil || gen != "" || created {
		t.Fatalf("again: %q %v %v", gen, created, err)
	}
	if _, err := r.Authenticate(ctx, AdminUser, "another-password"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("the second password works: %v", err)
	}
}

func TestTokens(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	if _, err := r.CreateUser(ctx, "ops", "password1", RoleOperator); err != nil {
		t.Fatal(err)
	}
	plain, tok, err := r.CreateToken(ctx, "ops", "ci", 0)
	if err != nil || tok.ExpiresAt != nil || len(plain) != len(TokenPrefix)+43 {
		t.Fatalf("%q %+v %v", plain, tok, err)
	}
	id, err := r.AuthenticateToken(ctx, plain)
	if err != nil || id.Name != "ops" || id.Role != RoleOperator || id.Via != "token" || !id.Expires.IsZero() {
		t.Fatalf("token: %+v %v", id, err)
	}
	// A connection made with a token that expires ends when it does.
	day, dayTok, err := r.CreateToken(ctx, "ops", "day", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := r.Authenticate(ctx, "ops", day); err != nil || !id.Expires.Equal(*dayTok.ExpiresAt) {
		t.Fatalf("token with a ttl: expires %v, want %v (%v)", id.Expires, *dayTok.ExpiresAt, err)
	}
	// As an MQTT password: with the owner's name, or no name.
	if _, err := r.Authenticate(ctx, "ops", plain); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authenticate(ctx, "", plain); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateUser(ctx, "eve", "password1", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authenticate(ctx, "eve", plain); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("someone else's token: %v", err)
	}
	if _, err := r.AuthenticateToken(ctx, plain+"x"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
	if _, _, err := r.CreateToken(ctx, "ghost", "x", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("token for unknown user: %v", err)
	}
	short, _, err := r.CreateToken(ctx, "ops", "short", time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond) // let a 1 ns ttl pass; not waiting on anything
	if _, err := r.AuthenticateToken(ctx, short); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("expired token: %v", err)
	}
	list, _, err := r.ListTokens(ctx, "ops", 0, "")
	if err != nil || len(list) != 3 {
		t.Fatalf("list: %+v %v", list, err)
	}
	if err := r.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AuthenticateToken(ctx, plain); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("revoked token: %v", err)
	}
	if err := r.RevokeToken(ctx, tok.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke twice: %v", err)
	}
}

func TestSessions(t *testing.T) {
	sqliteOnly(t, "reopens the file")
	dir := t.TempDir()
	ctx := context.Background()
	db, err := OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenRegistry(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.hashCost = bcrypt.MinCost
	u, err := r.CreateUser(ctx, "viewer1", "password1", RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	tok, exp, err := r.IssueSession(ctx, u, time.Hour)
	if err != nil || time.Until(exp) < 59*time.Minute {
		t.Fatalf("%v %v", exp, err)
	}
	id, err := r.VerifySession(tok)
	if err != nil || id.Name != "viewer1" || id.Role != RoleViewer || id.Via != "session" || id.SessionID == "" {
		t.Fatalf("verify: %+v %v", id, err)
	}
	// Accepted, and a connection made with it kept, until the leeway
	// past its expiry is over.
	if !id.Expires.Equal(exp.Add(sessionLeeway)) {
		t.Fatalf("session expires %v, want %v", id.Expires, exp.Add(sessionLeeway))
	}
	if id, err := r.Authenticate(ctx, "viewer1", "password1"); err != nil || !id.Expires.IsZero() {
		t.Fatalf("password: %+v %v", id, err)
	}
	if id, err := r.Authenticate(ctx, "viewer1", tok); err != nil || id.Via != "session" {
		t.Fatalf("as MQTT password: %+v %v", id, err)
	}
	tampered := tok[:len(tok)-2] + "AA"
	if _, err := r.VerifySession(tampered); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("tampered: %v", err)
	}
	expired, _, _ := r.IssueSession(ctx, u, time.Nanosecond)
	// Expiry has one-second granularity and 5 s leeway: forge the claim
	// instead of waiting.
	_ = expired
	old := mustSign(t, r, "viewer1", time.Now().Add(-time.Minute))
	if _, err := r.VerifySession(old); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("expired: %v", err)
	}

	// The key and the revocation survive a restart.
	if err := r.RevokeSession(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := r.VerifySession(tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("revoked: %v", err)
	}
	tok2, _, _ := r.IssueSession(ctx, u, time.Hour)
	r.Close()
	db.Close()
	db, err = OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r, err = OpenRegistry(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.VerifySession(tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("revoked after restart: %v", err)
	}
	if _, err := r.VerifySession(tok2); err != nil {
		t.Fatalf("valid after restart: %v", err)
	}
}

// A password shaped like an API token or a session JWT would be read as
// one at login and could never work: creating such a user is refused with
// an error on the password field, and nothing is stored.
func TestTokenShapedPasswordsRefused(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	for _, pw := range []string{TokenPrefix + "abcdefgh", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"} {
		var ie *InvalidError
		if _, err := r.CreateUser(ctx, "tok", pw, RoleViewer); !errors.As(err, &ie) || ie.Field != "password" {
			t.Fatalf("CreateUser with password %q: %v, want *InvalidError on password", pw, err)
		}
		if err := CheckPassword(pw); err == nil {
			t.Fatalf("CheckPassword(%q) = nil", pw)
		}
	}
	if _, err := r.User(ctx, "tok"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("user after refusals: %v", err)
	}
	if _, err := r.CreateUser(ctx, "tok", "eyJ.but-not.a-jwt.really", RoleViewer); err != nil {
		t.Fatalf("a password with three dots: %v", err)
	}
}

func TestUpdateUserPasswordAndRole(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	var revoked []Revocation
	var mu sync.Mutex
	r.OnRevoke(func(rv Revocation) { mu.Lock(); revoked = append(revoked, rv); mu.Unlock() })
	if _, err := r.CreateUser(ctx, AdminUser, "admin-password", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateUser(ctx, "carol", "old-password", RoleViewer); err != nil {
		t.Fatal(err)
	}
	u, _ := r.User(ctx, "carol")
	sess, _, err := r.IssueSession(ctx, u, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := r.CreateToken(ctx, "carol", "ci", 0)
	if err != nil {
		t.Fatal(err)
	}
	pw := "new-password"
	if _, err := r.UpdateUser(ctx, "carol", UserUpdate{Password: &pw}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.VerifySession(sess); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("a session opened before the password change: %v", err)
	}
	if _, err := r.AuthenticateUser(ctx, "carol", "old-password"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("old password: %v", err)
	}
	if _, err := r.AuthenticateUser(ctx, "carol", pw); err != nil {
		t.Fatalf("new password: %v", err)
	}
	if _, err := r.AuthenticateToken(ctx, tok); err != nil {
		t.Fatalf("API tokens outlive a password change: %v", err)
	}
	fresh, _, err := r.IssueSession(ctx, u, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.VerifySession(fresh); err != nil {
		t.Fatalf("a session opened after the change: %v", err)
	}
	role := RoleOperator
	u, err = r.UpdateUser(ctx, "carol", UserUpdate{Role: &role})
	if err != nil || u.Role != RoleOperator {
		t.Fatalf("role: %+v %v", u, err)
	}
	if id, err := r.VerifySession(fresh); err != nil || id.Role != RoleOperator {
		t.Fatalf("session after role change: %+v %v", id, err)
	}
	mu.Lock()
	if len(revoked) != 2 || revoked[0] != (Revocation{Name: "carol"}) || revoked[1] != (Revocation{Name: "carol"}) {
		t.Fatalf("revocations %+v, want two for carol", revoked)
	}
	mu.Unlock()

	viewer := RoleViewer
	if _, err := r.UpdateUser(ctx, AdminUser, UserUpdate{Role: &viewer}); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("demote the last admin: %v", err)
	}
	short, tokenShaped, bad := "short", TokenPrefix+"abcdefgh", "root"
	var ie *InvalidError
	for _, p := range []UserUpdate{{Password: &short}, {Password: &tokenShaped}, {Role: &bad}} {
		if _, err := r.UpdateUser(ctx, "carol", p); !errors.As(err, &ie) {
			t.Fatalf("%+v: %v, want *InvalidError", p, err)
		}
	}
	if _, err := r.UpdateUser(ctx, "ghost", UserUpdate{Role: &viewer}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown user: %v", err)
	}
	// A second admin makes demoting the first possible.
	admin := RoleAdmin
	if _, err := r.UpdateUser(ctx, "carol", UserUpdate{Role: &admin}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.UpdateUser(ctx, AdminUser, UserUpdate{Role: &viewer}); err != nil {
		t.Fatalf("demote one of two admins: %v", err)
	}
}

func TestSessionOfRecreatedUserIsInvalid(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	if _, err := r.CreateUser(ctx, AdminUser, "admin-password", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	u, err := r.CreateUser(ctx, "dave", "password-1", RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	sess, _, _ := r.IssueSession(ctx, u, time.Hour)
	if err := r.DeleteUser(ctx, "dave"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateUser(ctx, "dave", "password-1", RoleViewer); err != nil {
		t.Fatal(err)
	}
	if _, err := r.VerifySession(sess); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("the old dave's session works for the new dave: %v", err)
	}
}

func TestTokensPerUserAreBounded(t *testing.T) {
	r, _ := openTestRegistry(t)
	ctx := context.Background()
	if _, err := r.CreateUser(ctx, "many", "password-1", RoleViewer); err != nil {
		t.Fatal(err)
	}
	var last Token
	for i := 0; i < MaxTokensPerUser; i++ {
		_, tk, err := r.CreateToken(ctx, "many", "t", time.Hour)
		if err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
		last = tk
	}
	var ie *InvalidError
	if _, _, err := r.CreateToken(ctx, "many", "one too many", time.Hour); !errors.As(err, &ie) {
		t.Fatalf("token %d: %v, want *InvalidError", MaxTokensPerUser+1, err)
	}
	if err := r.RevokeToken(ctx, last.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.CreateToken(ctx, "many", "room again", time.Hour); err != nil {
		t.Fatalf("after a revocation: %v", err)
	}
}
