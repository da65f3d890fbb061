# Sourced by the integration scripts: apt_install <package> <who> installs a Debian package
# (as root, or through passwordless sudo) when the caller found it missing.
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
    echo "$2: installing $1 with apt-get" >&2
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$1"
}
