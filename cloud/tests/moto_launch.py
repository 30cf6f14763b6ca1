"""moto_server with a RegisterImage that keeps what AWS keeps.

Plain moto 5.2.5 stores only an image's name and description (notes/aws-emulator.md):
block device mappings, boot mode, ENA, TPM, IMDS, architecture and tags are dropped,
a made-up 15 GiB snapshot backs every image, and duplicate names or unknown snapshots
are accepted. This launcher patches RegisterImage so the tests can check what qcloud
registers, makes EBS report the real block size (524288, not 512: clients that size
blocks from StartSnapshot, like coldsnap, need it), then runs moto's own server:
`python moto_launch.py -H 127.0.0.1 -p 0`.
"""

import sys

from moto.core.responses import ActionResult
from moto.ebs.models import EBSSnapshot
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.amis import Ami
from moto.ec2.responses.amis import AmisResponse
from moto.server import main

_stock_bdm = Ami.block_device_mappings


class DuplicateName(EC2ClientError):
    def __init__(self, name, other):
        super().__init__(
            "InvalidAMIName.Duplicate",
            f"AMI name {name} is already in use by AMI {other}",
        )


def register_image(self):
    name = self._get_param("Name")
    description = self._get_param("Description", "")
    self.error_on_dryrun()
    bdms = self._get_param("BlockDeviceMappings", []) or []
    for m in bdms:
        snapshot = (m.get("Ebs") or {}).get("SnapshotId")
        if snapshot:
            self.ec2_backend.get_snapshot(snapshot)  # InvalidSnapshot.NotFound
    for other in self.ec2_backend.amis.values():
        if other.name == name and other.owner_id == self.ec2_backend.account_id:
            raise DuplicateName(name, other.id)
    image = self.ec2_backend.register_image(name, description)
    image.qimg_bdms = bdms
    image.architecture = self._get_param("Architecture")
    image.virtualization_type = self._get_param("VirtualizationType")
    image.root_device_name = self._get_param("RootDeviceName")
    image.root_device_type = "ebs"
    image.boot_mode = self._get_param("BootMode")
    image.ena_support = self._get_param("EnaSupport")
    image.sriov = image.sriov_net_support = self._get_param("SriovNetSupport")
    image.tmp = image.tpm_support = self._get_param("TpmSupport")
    image.imds = image.imds_support = self._get_param("ImdsSupport")
    for spec in self._get_param("TagSpecifications", []) or []:
        if spec.get("ResourceType") == "image":
            image.add_tags({t["Key"]: t["Value"] for t in spec.get("Tags", [])})
    return ActionResult({"ImageId": image.id})


def block_device_mappings(self):
    custom = getattr(self, "qimg_bdms", None)
    return custom if custom is not None else _stock_bdm.fget(self)


_stock_ebs_init = EBSSnapshot.__init__


def ebs_snapshot_init(self, *args, **kwargs):
    _stock_ebs_init(self, *args, **kwargs)
    self.block_size = 512 * 1024


EBSSnapshot.__init__ = ebs_snapshot_init
AmisResponse.register_image = register_image
Ami.block_device_mappings = property(block_device_mappings)

if __name__ == "__main__":
    main(sys.argv[1:])
