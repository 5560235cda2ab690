"""Traffic scene generation with a shapely collision/offroad oracle (Gen-neG Sec. 4.2, App. B.2).

Modules, one job each:

* :mod:`~genneg_traffic.features`: the per-vehicle feature vector and its normalisation;
* :mod:`~genneg_traffic.geometry`: vehicle rectangles as numpy corners and shapely polygons;
* :mod:`~genneg_traffic.maps`: drivable-area polygons per map index, storage and rasterisation;
* :mod:`~genneg_traffic.oracle`: the collision / offroad oracle (by scene and by agent);
* :mod:`~genneg_traffic.scenes`: cutting 80 m scene windows into padded tensors;
* :mod:`~genneg_traffic.synthetic`, :mod:`~genneg_traffic.sumo`: the two data sources;
* :mod:`~genneg_traffic.dataset`: the on-disk dataset format, the genneg ``Dataset``;
* :mod:`~genneg_traffic.network`: the RPE transformer denoiser and classifiers (App. B.2);
* :mod:`~genneg_traffic.presets`, :mod:`~genneg_traffic.cli`, :mod:`~genneg_traffic.plugin`.
"""

__version__ = "0.1.0"
