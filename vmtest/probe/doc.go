// Package probe holds the tests that prove the vmtest VM is fit for
// udpmapsync's kernel tests: Debian's 6.1 kernel with BTF, fentry programs
// that load and attach, and network namespaces with veth and bridges. They
// skip outside the VM; vmtest's own test runs them inside it through vmrun.
package probe
