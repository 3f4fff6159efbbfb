#!/bin/sh
# Configure a freshly debootstrapped Debian 12 rootfs into a Vagrant box's system. Runs as root INSIDE the
# rootfs (chroot, by vagrant/build-box), offline. Part of the rootfs cache key: editing it rebuilds the rootfs.
#   box-rootfs.sh PUBKEY_FILE      (Vagrant's insecure public key, copied in by build-box)
set -eu
pubkey=${1:?pubkey}
user=vagrant

echo ralph-vm > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tralph-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
printf 'LABEL=vmroot\t/\text4\tdefaults,errors=remount-ro\t0 1\n' > /etc/fstab

# Network: DHCP on the first NIC (Vagrant's management network), DNS from DHCP through resolved.
mkdir -p /etc/systemd/network
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    > /etc/systemd/network/50-dhcp.network
systemctl enable systemd-networkd.service systemd-resolved.service ssh.service >/dev/null 2>&1
# Quiet, quick boot: nothing periodic, nothing waiting for "online", no first-boot questions.
for unit in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
            e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-tmpfiles-clean.timer \
            systemd-firstboot.service getty@tty1.service; do
    ln -sf /dev/null "/etc/systemd/system/$unit"
done
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' > /etc/systemd/journald.conf.d/ralph.conf

# The Vagrant user: Vagrant's insecure key, passwordless sudo, lingering (user@1000.service at boot).
id "$user" >/dev/null 2>&1 || useradd -m -u 1000 -s /bin/bash "$user"
echo "$user:$user" | chpasswd
install -d -m 700 -o "$user" -g "$user" "/home/$user/.ssh"
install -m 600 -o "$user" -g "$user" "$pubkey" "/home/$user/.ssh/authorized_keys"
printf '%s ALL=(ALL) NOPASSWD:ALL\nDefaults:%s !requiretty\n' "$user" "$user" > "/etc/sudoers.d/$user"
chmod 440 "/etc/sudoers.d/$user"
mkdir -p /var/lib/systemd/linger
touch "/var/lib/systemd/linger/$user"
install -d -o "$user" -g "$user" /vagrant
printf 'UseDNS no\n' > /etc/ssh/sshd_config.d/ralph.conf

# Kernel: drop module trees a VM never loads (~170 MB), and a small initramfs with the virtio drivers.
kdir=$(ls -d /lib/modules/* | head -n1)
for d in drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet drivers/infiniband drivers/staging \
         drivers/bluetooth net/bluetooth drivers/isdn sound drivers/iio drivers/hid drivers/input/touchscreen \
         drivers/usb drivers/mmc drivers/nfc net/wireless net/mac80211 drivers/net/can drivers/fpga; do
    rm -rf "${kdir:?}/kernel/$d"
done
depmod "$(basename "$kdir")"
printf 'MODULES=list\nCOMPRESS=zstd\n' > /etc/initramfs-tools/conf.d/ralph
printf '%s\n' virtio_pci virtio_blk virtio_scsi virtio_net virtio_console sd_mod ahci ata_piix ext4 crc32c_generic \
    > /etc/initramfs-tools/modules
update-initramfs -u -k all >/dev/null

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /root/.cache
echo "box-rootfs: ok"
