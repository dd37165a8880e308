package people

import (
	"context"
	"errors"
	"net/http"
	"net/mail"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// Routes registers the accounts API on r (mounted at /api/v1, requests already
// authenticated): /users for admins, /me for the signed-in user.
func (s *Service) Routes(r chi.Router) {
	admin := httpkit.Require(auth.PermAdmin)
	r.With(admin).Get("/users", s.listUsers)
	r.With(admin).Post("/users", s.createUser)
	r.With(admin).Get("/users/{id}", s.getUser)
	r.With(admin).Put("/users/{id}", s.updateUser)
	r.With(admin).Delete("/users/{id}", s.deleteUser)

	r.With(s.userOnly).Get("/me", s.getMe)
	r.With(s.userOnly).Put("/me", s.updateMe)
	r.With(s.userOnly).Post("/me/password", s.changePassword)
	r.With(s.userOnly).Get("/me/starred-jobs", s.listStarred)
	r.With(s.userOnly).Post("/me/starred-jobs", s.star)
	r.With(s.userOnly).Delete("/me/starred-jobs", s.unstar)
}

func (s *Service) fail(w http.ResponseWriter, r *http.Request, err error) {
	httpkit.Fail(s.log, w, r, err)
}

// userJSON is an account as the API shows it: never its password or hash.
type userJSON struct {
	ID          int64      `json:"id"`
	Username    string     `json:"username"`
	Email       string     `json:"email"`
	FullName    string     `json:"full_name"`
	Role        string     `json:"role"`
	Enabled     bool       `json:"enabled"`
	CreatedAt   time.Time  `json:"created_at"`
	LastLoginAt *time.Time `json:"last_login_at"`
	// Declared: the account is declared in the coordinator's config file
	// (DeclaredIn), and the API refuses to change or delete it (409).
	Declared   bool   `json:"declared"`
	DeclaredIn string `json:"declared_in,omitempty"`
}

func toUserJSON(u storage.User) userJSON {
	return userJSON{ID: u.ID, Username: u.Username, Email: u.Email, FullName: u.FullName, Role: u.Role,
		Enabled: u.Enabled, CreatedAt: u.CreatedAt.UTC(), LastLoginAt: u.LastLoginAt,
		Declared: u.Declared != "", DeclaredIn: u.Declared}
}

// notDeclared is nil unless account id is declared in the config file: then the
// 409 saying where to change it.
func (s *Service) notDeclared(ctx context.Context, id int64) error {
	u, err := s.db.GetUser(ctx, id)
	if err != nil {
		return err
	}
	if u.Declared != "" {
		return httpkit.Declared("account "+strconv.Quote(u.Username), u.Declared)
	}
	return nil
}

// usernameRE is what a username may be: what people type at a sign-in form, and
// safe in a URL path.
var usernameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func validUsername(name string) error {
	if !usernameRE.MatchString(name) {
		return httpkit.Unprocessable("username",
			"username %q must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

func validPassword(field, password string) error {
	if err := auth.CheckPasswordLength(password); err != nil {
		return httpkit.Unprocessable(field, "%s %v", field, err)
	}
	return nil
}

func validRole(role string) error {
	if !auth.ValidRole(role) {
		return httpkit.Unprocessable("role", "role %q is not one of %v", role, auth.RoleNames())
	}
	return nil
}

// validEmail accepts "" (none) or one plain address.
func validEmail(email string) error {
	if email == "" {
		return nil
	}
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || len(email) > 254 {
		return httpkit.Unprocessable("email", "email %q is not an address (like someone@example.org)", email)
	}
	return nil
}

func validFullName(name string) error {
	if len(name) > 200 {
		return httpkit.Unprocessable("full_name", "full_name is longer than 200 characters")
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return httpkit.Unprocessable("full_name", "full_name must not contain control characters")
	}
	return nil
}

// userID is the {id} of the URL; a malformed one names no user (404).
func userID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		return 0, storage.ErrNotFound
	}
	return id, nil
}

func (s *Service) listUsers(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	us, total, err := s.db.ListUsers(r.Context(), page)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]userJSON, len(us))
	for i, u := range us {
		out[i] = toUserJSON(u)
	}
	httpkit.WriteJSON(w, http.StatusOK, httpkit.NewList(out, total, page))
}

func (s *Service) createUser(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Username string `json:"username"`
		Password string `json:"password"`
		Role     string `json:"role"`
		Email    string `json:"email"`
		FullName string `json:"full_name"`
	}
	if err := httpkit.Decode(r, &in); err != nil {
		s.fail(w, r, err)
		return
	}
	for _, err := range []error{validUsername(in.Username), validPassword("password", in.Password), validRole(in.Role),
		validEmail(in.Email), validFullName(in.FullName)} {
		if err != nil {
			s.fail(w, r, err)
			return
		}
	}
	hash, err := s.hashPassword(r.Context(), in.Password)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	u, err := s.db.CreateUser(r.Context(), storage.NewUser{Username: in.Username, Email: in.Email, FullName: in.FullName,
		Role: in.Role, PasswordHash: hash})
	if errors.Is(err, storage.ErrConflict) {
		err = httpkit.Errorf(http.StatusConflict, "username", "a user named %q already exists", in.Username)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/users/"+strconv.FormatInt(u.ID, 10))
	httpkit.WriteJSON(w, http.StatusCreated, toUserJSON(u))
}

func (s *Service) getUser(w http.ResponseWriter, r *http.Request) {
	id, err := userID(r)
	if err == nil {
		var u storage.User
		if u, err = s.db.GetUser(r.Context(), id); err == nil {
			httpkit.WriteJSON(w, http.StatusOK, toUserJSON(u))
			return
		}
	}
	s.fail(w, r, err)
}

// userUpdate is an admin's change to an account; nil fields stay as they are.
type userUpdate struct {
	Role     *string `json:"role"`
	Email    *string `json:"email"`
	FullName *string `json:"full_name"`
	Enabled  *bool   `json:"enabled"`
	Password *string `json:"password"`
}

// changes checks u and turns it into the columns to set (the password hashed).
// Admins may not disable themselves or give up their own role: someone must be left
// to undo it.
func (s *Service) changes(ctx context.Context, self bool, u userUpdate) (storage.UserChanges, error) {
	c := storage.UserChanges{Role: u.Role, Email: u.Email, FullName: u.FullName, Enabled: u.Enabled}
	checks := []error{}
	if u.Role != nil {
		checks = append(checks, validRole(*u.Role))
		if self && *u.Role != storage.RoleAdmin {
			checks = append(checks, httpkit.Unprocessable("role", "you may not take the admin role from yourself"))
		}
	}
	if u.Email != nil {
		checks = append(checks, validEmail(*u.Email))
	}
	if u.FullName != nil {
		checks = append(checks, validFullName(*u.FullName))
	}
	if self && u.Enabled != nil && !*u.Enabled {
		checks = append(checks, httpkit.Unprocessable("enabled", "you may not disable your own account"))
	}
	if u.Password != nil {
		checks = append(checks, validPassword("password", *u.Password))
	}
	for _, err := range checks {
		if err != nil {
			return c, err
		}
	}
	if u.Password != nil {
		hash, err := s.hashPassword(ctx, *u.Password)
		if err != nil {
			return c, err
		}
		c.PasswordHash = &hash
	}
	return c, nil
}

func (s *Service) updateUser(w http.ResponseWriter, r *http.Request) {
	id, err := userID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.notDeclared(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	var in userUpdate
	if err := httpkit.Decode(r, &in); err != nil {
		s.fail(w, r, err)
		return
	}
	who, _ := auth.FromContext(r.Context())
	c, err := s.changes(r.Context(), who.UserID == id, in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	u, err := s.db.UpdateUser(r.Context(), id, c)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// A new password or a disabled account signs the user out everywhere (a disabled
	// account's sessions already stop working; this keeps them from coming back).
	if c.PasswordHash != nil || !u.Enabled {
		if _, err := s.db.DeleteUserSessions(r.Context(), id, nil); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	httpkit.WriteJSON(w, http.StatusOK, toUserJSON(u))
}

func (s *Service) deleteUser(w http.ResponseWriter, r *http.Request) {
	id, err := userID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if who, _ := auth.FromContext(r.Context()); who.UserID == id {
		s.fail(w, r, httpkit.Errorf(http.StatusConflict, "", "you may not delete your own account"))
		return
	}
	if err := s.notDeclared(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.db.DeleteUser(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
