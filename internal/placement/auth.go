package placement

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd authentication, for a cluster over mutual TLS. etcd takes a client certificate's
// CommonName as the user (package tlsutil puts the role there), so the users are the roles and
// need no passwords:
//
//	root, coordinator   etcd's root role: they run etcd (the embedded members are the coordinators)
//	worker              reads the cluster's keys, writes its own record (workers/)
//	importer            reads them, writes models and import records (models/, imports/)
//	admin               reads them, writes drain marks (drain/): `pregate status`, `pregate drain`
//	store               no user: stores never touch etcd, and a store's certificate gets nothing
//
// Permissions are per cluster prefix (/pregate/<cluster>/), in roles named pregate:<cluster>:….

// EnableAuth creates the users and roles above for s's cluster (again: it is idempotent, and
// several coordinators may run it at once) and turns etcd's authentication on. The caller's
// certificate must be root's or the coordinator's.
func (s *Store) EnableAuth(ctx context.Context) error {
	cli := s.cli
	role := func(name string) string { return "pregate:" + s.prefix[len("/pregate/"):len(s.prefix)-1] + ":" + name }
	grants := []struct {
		role, prefix string
		perm         clientv3.PermissionType
	}{
		{role("read"), s.prefix, clientv3.PermissionType(clientv3.PermRead)},
		{role("worker"), s.prefix + "workers/", clientv3.PermissionType(clientv3.PermReadWrite)},
		{role("importer"), s.modelsPrefix(), clientv3.PermissionType(clientv3.PermReadWrite)},
		{role("importer"), s.prefix + "imports/", clientv3.PermissionType(clientv3.PermReadWrite)},
		{role("admin"), s.prefix + "drain/", clientv3.PermissionType(clientv3.PermReadWrite)},
	}
	for _, g := range grants {
		if _, err := cli.RoleAdd(ctx, g.role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
			return fmt.Errorf("placement: etcd role %s: %w", g.role, err)
		}
		if _, err := cli.RoleGrantPermission(ctx, g.role, g.prefix, clientv3.GetPrefixRangeEnd(g.prefix), g.perm); err != nil {
			return fmt.Errorf("placement: etcd role %s on %s: %w", g.role, g.prefix, err)
		}
	}
	users := map[string][]string{
		"root":        {"root"},
		"coordinator": {"root"},
		"worker":      {role("read"), role("worker")},
		"importer":    {role("read"), role("importer")},
		"admin":       {role("read"), role("admin")},
	}
	for user, roles := range users {
		if _, err := cli.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			return fmt.Errorf("placement: etcd user %s: %w", user, err)
		}
		for _, r := range roles {
			if _, err := cli.UserGrantRole(ctx, user, r); err != nil {
				return fmt.Errorf("placement: etcd user %s, role %s: %w", user, r, err)
			}
		}
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("placement: enable etcd authentication: %w", err)
	}
	return nil
}
