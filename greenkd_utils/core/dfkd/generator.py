"""CMI's image generator: a small convolutional network from a latent vector to an image in [0, 1].

Latent (nz) -> linear to a (2 ngf) x s/4 x s/4 map -> [upsample x2, 3x3 conv, batch norm,
leaky ReLU] twice -> 3x3 conv to the image's channels -> sigmoid. The output is in pixel space,
so a synthesized image is stored like a real one (uint8) and standardised with the dataset's
mean and std before it reaches the teacher.
"""

from __future__ import annotations

from torch import nn


class ImageGenerator(nn.Module):
    def __init__(self, nz: int = 256, ngf: int = 64, image_size: int = 32, channels: int = 3):
        super().__init__()
        if image_size % 4 != 0:
            raise ValueError(f"the generator upsamples twice by 2: image_size must be a multiple of 4; got {image_size}")
        self.nz, self.init_size = nz, image_size // 4
        self.project = nn.Linear(nz, 2 * ngf * self.init_size**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z):
        x = self.project(z).view(z.shape[0], -1, self.init_size, self.init_size)
        return self.body(x)

    def reinitialize(self) -> "ImageGenerator":
        """Fresh weights (drawn from torch's global generator) and batch-norm statistics, in place."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return self
